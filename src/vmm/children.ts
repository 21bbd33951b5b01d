/**
 * The host processes of one VM besides the runner (qemu, virtiofsd, netd): each
 * starts under `setpriv --pdeathsig KILL`, so the kernel kills it when the
 * runner dies, however it dies (a SIGKILLed runner must not leave an
 * unmanaged VM). Deno spawns from the main thread, so the "parent" whose
 * death counts is the runner process itself. Their output goes to the
 * sandbox's bounded `runner.log` ({@link RunnerLog}).
 *
 * @module
 */

import { BackendUnavailableError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import { logTail } from "../util/logs.ts";
import type { BackendKind } from "./detect.ts";
import { dirname } from "node:path";
import type { RunnerLog } from "./runner_log.ts";

const SETPRIV = "setpriv";
const TIE_TO_RUNNER = ["--pdeathsig", "KILL", "--"];
/** How long a helper that exited at start gets for its last stderr to reach the log. */
const LAST_WORDS_MS = 50;

/**
 * The helper processes of one VM, killed together.
 *
 * @example
 * ```ts
 * import { ChildGroup } from "./children.ts";
 * import { RunnerLog } from "./runner_log.ts";
 * await using log = await RunnerLog.open(`${await Deno.makeTempDir()}/runner.log`);
 * using children = new ChildGroup("qemu", log);
 * const sleeper = children.spawn("sleep", ["60"]);
 * children.kill();
 * console.log((await sleeper.status).signal); // "SIGKILL"
 * ```
 */
export class ChildGroup implements Disposable {
  readonly #children: Deno.ChildProcess[] = [];

  /** `backend` names who fails when a helper does; `log` receives their output. */
  constructor(readonly backend: BackendKind, readonly log: RunnerLog) {}

  /** Starts `program` tied to the runner; its stderr (and stdout, when `stdout` is "log") go to the log. */
  spawn(program: string, args: readonly string[], stdout: "log" | "null" = "null"): Deno.ChildProcess {
    const child = new Deno.Command(SETPRIV, {
      args: [...TIE_TO_RUNNER, program, ...args],
      stdin: "null",
      stdout: stdout === "log" ? "piped" : "null",
      stderr: "piped",
    }).spawn();
    this.#children.push(child);
    if (stdout === "log") this.log.pipeFrom(child.stdout);
    this.log.pipeFrom(child.stderr);
    return child;
  }

  /**
   * Starts `program` tied to the runner with its stdin and stdout as pipes
   * for the caller (netd's control channel, qemu's agent channel); its
   * stderr goes to the log.
   */
  spawnPiped(program: string, args: readonly string[]): Deno.ChildProcess {
    const child = new Deno.Command(SETPRIV, {
      args: [...TIE_TO_RUNNER, program, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#children.push(child);
    this.log.pipeFrom(child.stderr);
    return child;
  }

  /** SIGKILLs every helper still running. */
  kill(): void {
    for (const c of this.#children) {
      try {
        c.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }

  /** Resolves once every helper has exited. */
  async exited(): Promise<void> {
    await Promise.all(this.#children.map((c) => c.status));
  }

  /**
   * Waits for `child` to create the socket `path` (an inotify watch on its
   * directory, no polling); fails with its last log lines if it exits first.
   */
  async waitForSocket(
    child: Deno.ChildProcess,
    path: string,
    what: string,
    ms = DEFAULTS.helperSocketMs,
  ): Promise<void> {
    // Watching before the first look: a socket made in between is seen by one or the other.
    const watcher = Deno.watchFs(dirname(path), { recursive: false });
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const created = (async () => {
        if (await isSocket(path)) return "created" as const;
        for await (const e of watcher) {
          if (e.paths.includes(path) && await isSocket(path)) return "created" as const;
        }
        return "timeout" as const;
      })();
      const outcome = await Promise.race([
        created,
        child.status.then(() => "exited" as const),
        new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), ms))),
      ]);
      if (outcome === "created") return;
      if (outcome === "exited") {
        await new Promise((r) => setTimeout(r, LAST_WORDS_MS));
        await this.log.flush(LAST_WORDS_MS);
        throw new BackendUnavailableError(
          this.backend,
          `${what} exited at start:\n${await logTail(this.log.path, 5)}\n`,
          `see ${this.log.path}`,
        );
      }
      throw new BackendUnavailableError(
        this.backend,
        `${what} did not create ${path} within ${ms} ms`,
        "see the sandbox's runner.log",
      );
    } finally {
      clearTimeout(timer);
      watcher.close();
    }
  }

  /** Kills every helper. */
  [Symbol.dispose](): void {
    this.kill();
  }
}

async function isSocket(path: string): Promise<boolean> {
  return await Deno.stat(path).then((s) => s.isSocket === true, () => false);
}
