/**
 * Running host commands with errors that quote what was run and what it said.
 *
 * @module
 */

import { KrunboxError } from "../errors.ts";

/** Options for {@link runCommand}. */
export interface RunOptions {
  /** Working directory. */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Let the child write to our stdout/stderr instead of capturing. */
  inherit?: boolean;
  /** Bytes for the child's stdin. */
  stdin?: Uint8Array;
  /** Abort the command. */
  signal?: AbortSignal;
}

/** What a finished command printed. */
export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * A host command failed to start or exited non-zero.
 *
 * @example
 * ```ts
 * import { CommandError } from "./command.ts";
 * const e = new CommandError("mkfs.ext4 -q x", 1, "mkfs.ext4: No such file");
 * console.log(e.code, e.exitCode); // BACKEND_UNAVAILABLE 1
 * if (!e.message.startsWith("`mkfs.ext4 -q x` exited with 1")) throw new Error(e.message);
 * ```
 */
export class CommandError extends KrunboxError {
  constructor(
    readonly commandLine: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    const tail = stderr.trim().split("\n").slice(-15).join("\n");
    super(
      "BACKEND_UNAVAILABLE",
      exitCode === undefined
        ? `cannot run \`${commandLine}\`: ${(options?.cause as Error | undefined)?.message ?? "not found"}`
        : `\`${commandLine}\` exited with ${exitCode}${tail ? `:\n${tail}` : ""}`,
      options,
    );
  }
}

/**
 * Runs a command to completion; throws {@link CommandError} on failure.
 *
 * @example
 * ```ts
 * import { runCommand } from "./command.ts";
 * const { stdout } = await runCommand("uname", ["-r"]);
 * console.log(stdout.trim()); // e.g. 6.1.0-57-cloud-amd64
 * ```
 */
export async function runCommand(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const commandLine = [cmd, ...args].join(" ");
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: options.cwd,
      env: options.env,
      stdin: options.stdin ? "piped" : "null",
      stdout: options.inherit ? "inherit" : "piped",
      stderr: options.inherit ? "inherit" : "piped",
      signal: options.signal,
    }).spawn();
  } catch (cause) {
    throw new CommandError(commandLine, undefined, "", { cause });
  }
  // Output is read while stdin is written: a child that writes before it has read all its input never blocks.
  const output = child.output();
  let writeError: unknown;
  if (options.stdin) {
    const w = child.stdin.getWriter();
    // A child that exits before reading everything (bad input) breaks the pipe: its exit and stderr say why.
    await w.write(options.stdin).then(() => w.close()).catch((e) => writeError = e);
  }
  const out = await output;
  const dec = new TextDecoder();
  const stdout = options.inherit ? "" : dec.decode(out.stdout);
  const stderr = options.inherit ? "" : dec.decode(out.stderr);
  if (!out.success) throw new CommandError(commandLine, out.code, stderr || stdout);
  if (writeError) {
    throw new CommandError(commandLine, out.code, "it did not read all of its input", { cause: writeError });
  }
  return { stdout, stderr };
}

/**
 * The absolute path of a program on PATH (or given as a path), or undefined.
 *
 * @example
 * ```ts
 * import { which } from "./command.ts";
 * console.log(await which("qemu-system-x86_64") ?? "qemu missing"); // e.g. /usr/bin/qemu-system-x86_64
 * ```
 */
export async function which(program: string, extraDirs: string[] = []): Promise<string | undefined> {
  const candidates = program.includes("/")
    ? [program]
    : [...(Deno.env.get("PATH") ?? "").split(":").filter(Boolean), ...extraDirs].map((d) => `${d}/${program}`);
  for (const path of candidates) {
    try {
      const st = await Deno.stat(path);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return path;
    } catch {
      // not here; try the next one
    }
  }
  return undefined;
}
