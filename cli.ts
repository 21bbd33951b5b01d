/**
 * The krunbox command line, over the same API a program uses:
 *
 * ```
 * krunbox run <image> [--name N] [--cpus N] [--memory MiB] [--env K=V]… [-- cmd args…]
 * krunbox create <name> <image> [--cpus N] [--memory MiB] [--env K=V]…   (detached)
 * krunbox start <name> | stop <name> | rm <name> | list
 * krunbox exec <name> [--] <cmd> [args…]
 * krunbox pull <image> [--insecure]
 * krunbox metrics <name> [--watch MS]
 * ```
 *
 * `deno task krunbox …` from a checkout, or `deno run -A jsr:@krunbox/krunbox/cli …`.
 *
 * @example
 * ```ts
 * import { main } from "./cli.ts";
 * await main(["list"]);
 * ```
 *
 * @module
 */

import { Images, InvalidConfigError, KrunboxError, type PullEvent, Sandbox, type SandboxBuilder } from "./mod.ts";

const USAGE = `usage:
  krunbox run <image> [--name N] [--cpus N] [--memory MiB] [--env K=V]... [-- cmd args...]
  krunbox create <name> <image> [--cpus N] [--memory MiB] [--env K=V]...
  krunbox start <name>      krunbox stop <name>      krunbox rm <name>      krunbox list
  krunbox exec <name> [--] <cmd> [args...]
  krunbox pull <image> [--insecure]
  krunbox metrics <name> [--watch MS]`;

interface Parsed {
  positional: string[];
  flags: Map<string, string[]>;
  rest: string[];
}

function parse(args: string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string[]>();
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      i++;
      break;
    }
    if (a.startsWith("--")) {
      const [k, v] = a.includes("=") && !a.startsWith("--env=") ? a.slice(2).split(/=(.*)/s) : [a.slice(2), undefined];
      const key = k.startsWith("env=") ? "env" : k;
      const value = k.startsWith("env=") ? k.slice(4) : v ?? (["insecure"].includes(key) ? "true" : args[++i]);
      if (value === undefined) throw new InvalidConfigError(`--${key}`, "needs a value");
      flags.set(key, [...(flags.get(key) ?? []), value]);
    } else {
      positional.push(a);
    }
  }
  return { positional, flags, rest: args.slice(i) };
}

function configure(b: SandboxBuilder, p: Parsed): SandboxBuilder {
  const cpus = p.flags.get("cpus")?.at(-1);
  const memory = p.flags.get("memory")?.at(-1);
  if (cpus) b = b.cpus(Number(cpus));
  if (memory) b = b.memory(Number(memory));
  for (const kv of p.flags.get("env") ?? []) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new InvalidConfigError("--env", `wants KEY=VALUE, got ${kv}`);
    b = b.env(kv.slice(0, eq), kv.slice(eq + 1));
  }
  return b.onPullProgress(printPullProgress);
}

/** One stderr line per pull event: bytes per layer, the other phases by name. */
function printPullProgress(e: PullEvent): void {
  if (e.phase === "layer") {
    const size = `${(e.downloadedBytes / 1e6).toFixed(1)}/${(e.totalBytes / 1e6).toFixed(1)} MB`;
    console.error(`pull: layer ${e.digest.slice(7, 19)} ${e.cached ? "in the store" : size}`);
  } else if (e.phase === "resolved") {
    console.error(`pull: ${e.reference}: ${e.layers} layers, ${(e.totalBytes / 1e6).toFixed(1)} MB`);
  } else if (e.phase !== "unpacking") {
    console.error(`pull: ${e.phase}${e.phase === "done" && e.cached ? " (already in the store)" : ""}`);
  }
}

function need(p: Parsed, n: number, what: string): string[] {
  if (p.positional.length < n + 1) throw new InvalidConfigError("arguments", `missing ${what}\n${USAGE}`);
  return p.positional.slice(1, n + 1);
}

async function streamExec(sb: Sandbox, cmd: string, args: string[]): Promise<number> {
  const p = await sb.execStream(cmd, { args });
  await Promise.all([
    p.stdout.pipeTo(Deno.stdout.writable, { preventClose: true }),
    p.stderr.pipeTo(Deno.stderr.writable, { preventClose: true }),
  ]);
  const status = await p.exited;
  return status.code ?? 128 + (status.signal ?? 0);
}

/**
 * Runs the CLI with the given arguments; returns the exit code.
 *
 * @example
 * ```ts
 * import { main } from "./cli.ts";
 * Deno.exit(await main(Deno.args));
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const p = parse(args[0] === "exec" ? args.slice(0, 2) : args);
  const command = p.positional[0];
  switch (command) {
    case "run": {
      const [image] = need(p, 1, "<image>");
      const name = p.flags.get("name")?.at(-1) ?? `run-${crypto.randomUUID().slice(0, 8)}`;
      await using sb = await configure(Sandbox.builder(name).image(image), p).create();
      const [cmd, ...rest] = p.rest.length ? p.rest : (sb.config().entrypoint ?? [sb.config().shell]);
      const code = await streamExec(sb, cmd, rest);
      await sb.stopAndWait();
      await Sandbox.remove(name);
      return code;
    }
    case "create": {
      const [name, image] = need(p, 2, "<name> <image>");
      const sb = await configure(Sandbox.builder(name).image(image), p).createDetached();
      console.log(sb.name);
      return 0;
    }
    case "start": {
      const [name] = need(p, 1, "<name>");
      await Sandbox.startDetached(name);
      return 0;
    }
    case "stop": {
      const [name] = need(p, 1, "<name>");
      await (await Sandbox.get(name)).stop();
      return 0;
    }
    case "rm": {
      const [name] = need(p, 1, "<name>");
      await Sandbox.remove(name);
      return 0;
    }
    case "list": {
      for (const h of await Sandbox.list()) {
        console.log(
          `${h.name.padEnd(24)} ${h.status.padEnd(9)} ${h.updatedAt.toISOString()}${
            h.stopReason ? `  (${h.stopReason})` : ""
          }`,
        );
      }
      return 0;
    }
    case "exec": {
      // Everything after the name is the command, flags included.
      const [, name, ...tail] = args;
      const [cmd, ...rest] = tail[0] === "--" ? tail.slice(1) : tail;
      if (!name) throw new InvalidConfigError("arguments", `missing <name>\n${USAGE}`);
      if (!cmd) throw new InvalidConfigError("arguments", `missing <cmd>\n${USAGE}`);
      const sb = await (await Sandbox.get(name)).connect();
      try {
        return await streamExec(sb, cmd, rest);
      } finally {
        await sb[Symbol.asyncDispose]();
      }
    }
    case "pull": {
      const [image] = need(p, 1, "<image>");
      const img = await Images.pull(image, {
        insecure: p.flags.has("insecure") || undefined,
        onProgress: printPullProgress,
      });
      console.log(img.manifestDigest);
      return 0;
    }
    case "metrics": {
      const [name] = need(p, 1, "<name>");
      const watch = p.flags.get("watch")?.at(-1);
      const sb = await (await Sandbox.get(name)).connect();
      try {
        const show = (m: Awaited<ReturnType<Sandbox["metrics"]>>) =>
          console.log(
            `cpu ${m.cpuPercent.toFixed(1)}%  mem ${(m.memoryBytes / 1048576).toFixed(1)}/${
              (m.memoryLimitBytes / 1048576).toFixed(0)
            } MiB  ` +
              `disk r/w ${m.diskReadBytes}/${m.diskWriteBytes}  net rx/tx ${m.netRxBytes}/${m.netTxBytes}  up ${
                (m.uptimeMs / 1000).toFixed(1)
              } s`,
          );
        if (watch) { for await (const m of sb.metricsStream(Number(watch))) show(m); }
        else show(await sb.metrics());
      } finally {
        await sb[Symbol.asyncDispose]();
      }
      return 0;
    }
    default:
      console.error(USAGE);
      return command === undefined || command === "help" || command === "--help" ? 0 : 2;
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(e instanceof KrunboxError ? `krunbox: ${e.code}: ${e.message}` : e);
    Deno.exit(1);
  }
}
