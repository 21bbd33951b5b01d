/**
 * The CLI's dispatcher: global flags (`--help`, `--version`), the command
 * table, and the one place that turns an error into `krunbox: <message>` and
 * docker's exit code. Each command's module is imported only when that
 * command runs, so `krunbox ls` does not load the image or FFI code.
 *
 * @example
 * ```ts
 * import { main } from "./main.ts";
 * const code = await main(["--version"]);
 * console.log(code); // 0
 * ```
 *
 * @module
 */

import { type CommandSpec, helpText, parseCommand, type Parsed } from "./command.ts";
import { errorLine, EXIT_KRUNBOX, exitCodeOf } from "./exit.ts";
import { settings } from "../settings.ts";
import { VERSION } from "../version.ts";

/** A command: how it parses and what it does (resolves with the exit code). */
export interface Command {
  /** Its spec (name, usage, flags). */
  readonly spec: CommandSpec;
  /** Runs it with parsed arguments. */
  readonly run: (p: Parsed) => Promise<number>;
}

type Loader = () => Promise<Command>;

/** Every command with its one-line summary, in `--help` order; modules load on use. */
const COMMANDS: readonly { name: string; aliases?: string[]; summary: string; load: Loader }[] = [
  {
    name: "run",
    summary: "create a sandbox, run a command in it, stop it",
    load: () => import("./commands/run.ts").then((m) => m.run),
  },
  {
    name: "create",
    summary: "create a detached sandbox and print its name",
    load: () => import("./commands/run.ts").then((m) => m.create),
  },
  {
    name: "start",
    summary: "start stopped sandboxes (detached)",
    load: () => import("./commands/manage.ts").then((m) => m.start),
  },
  { name: "stop", summary: "stop running sandboxes", load: () => import("./commands/manage.ts").then((m) => m.stop) },
  {
    name: "rm",
    summary: "remove sandboxes (-f: stop them first)",
    load: () => import("./commands/manage.ts").then((m) => m.rm),
  },
  {
    name: "ls",
    aliases: ["ps", "list"],
    summary: "list sandboxes (-a: stopped ones too)",
    load: () => import("./commands/manage.ts").then((m) => m.ls),
  },
  {
    name: "exec",
    summary: "run a command in a running sandbox",
    load: () => import("./commands/exec.ts").then((m) => m.exec),
  },
  {
    name: "shell",
    summary: "an interactive shell in a running sandbox",
    load: () => import("./commands/exec.ts").then((m) => m.shell),
  },
  {
    name: "logs",
    summary: "print a sandbox's console and runner log",
    load: () => import("./commands/manage.ts").then((m) => m.logs),
  },
  {
    name: "inspect",
    summary: "print a sandbox's config and state as JSON",
    load: () => import("./commands/manage.ts").then((m) => m.inspect),
  },
  {
    name: "metrics",
    summary: "CPU, memory, disk and network of a sandbox",
    load: () => import("./commands/metrics.ts").then((m) => m.metrics),
  },
  {
    name: "pull",
    summary: "pull an image into the store",
    load: () => import("./commands/images.ts").then((m) => m.pull),
  },
  {
    name: "images",
    summary: "list the images in the store",
    load: () => import("./commands/images.ts").then((m) => m.images),
  },
  {
    name: "rmi",
    summary: "remove images from the store",
    load: () => import("./commands/images.ts").then((m) => m.rmi),
  },
  {
    name: "prune",
    summary: "remove unused blobs and layers",
    load: () => import("./commands/images.ts").then((m) => m.prune),
  },
  {
    name: "doctor",
    summary: "check every prerequisite and say how to fix each",
    load: () => import("./commands/host.ts").then((m) => m.doctor),
  },
  {
    name: "setup",
    summary: "provision what krunbox needs (idempotent)",
    load: () => import("./commands/host.ts").then((m) => m.setup),
  },
];

/** `krunbox --help`. */
export function globalHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    "usage: krunbox COMMAND [options] [args]",
    "",
    "Run untrusted code in local microVM sandboxes.",
    "",
    "commands:",
    ...COMMANDS.map((c) =>
      `  ${c.name.padEnd(width)}  ${c.summary}${c.aliases ? ` (also: ${c.aliases.join(", ")})` : ""}`
    ),
    "",
    "Run `krunbox COMMAND --help` for a command's options. `krunbox --version` prints the version.",
  ].join("\n");
}

/**
 * Runs the CLI on `args`; resolves with the exit code (never throws: errors
 * are printed as one line and become exit code 125, or 126/127 for a guest
 * command that could not start).
 */
export async function main(args: readonly string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === undefined || first === "--help" || first === "-h" || first === "help") {
    if (first === "help" && rest[0]) return await main([rest[0], "--help"]);
    console.log(globalHelp());
    return first === undefined ? 2 : 0;
  }
  if (first === "--version" || first === "-V" || first === "version") {
    console.log(`krunbox ${VERSION}`);
    return 0;
  }
  const entry = COMMANDS.find((c) => c.name === first || c.aliases?.includes(first));
  if (!entry) {
    console.error(`krunbox: unknown command "${first}" (see \`krunbox --help\`)`);
    return EXIT_KRUNBOX;
  }
  try {
    const command = await entry.load();
    const parsed = parseCommand(command.spec, rest);
    if (parsed.values.help) {
      console.log(helpText(command.spec));
      return 0;
    }
    return await command.run(parsed);
  } catch (e) {
    console.error(errorLine(e));
    if (settings.debug() && e instanceof Error) console.error(e.stack);
    return exitCodeOf(e);
  }
}
