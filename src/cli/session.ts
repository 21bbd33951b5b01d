/**
 * Running a guest command from the CLI, attached to the local terminal the
 * way `docker run/exec` are:
 *
 * - `-t` (a terminal): the guest process runs on a pseudo-terminal of the
 *   local window's size, resized on every `SIGWINCH`; with `-i` too, the
 *   local terminal is put in raw mode, so every key (Ctrl-C included) goes
 *   to the guest, whose own terminal turns it into a signal.
 * - `-i` without `-t`: local stdin is forwarded as bytes, EOF included.
 * - neither: stdin is /dev/null; stdout and stderr stream as they come.
 *
 * The terminal is restored on every way out: a normal exit, an error, and
 * SIGINT/SIGTERM/SIGHUP delivered to krunbox itself.
 *
 * @example
 * ```ts ignore
 * import { Sandbox } from "@krunbox/krunbox";
 * import { attach } from "./session.ts";
 * await using sb = await Sandbox.builder("s1").image("/srv/rootfs").create();
 * Deno.exitCode = await attach(sb, "sh", [], { interactive: true, tty: true });
 * ```
 *
 * @module
 */

import type { ExecStreamOptions, Sandbox } from "../sandbox/sandbox.ts";
import { exitCodeOfStatus } from "./exit.ts";

/** How a command attaches to the local terminal. */
export interface AttachOptions {
  /** Forward local stdin (`-i`). */
  readonly interactive: boolean;
  /** Run on a guest pseudo-terminal (`-t`). */
  readonly tty: boolean;
  /** The rest of the exec options (env, cwd, user). */
  readonly exec?: Omit<ExecStreamOptions, "args" | "stdin" | "tty">;
}

/** The local window's size, or 24×80 where stdout is not a terminal. */
function windowSize(): { rows: number; cols: number } {
  try {
    const { rows, columns } = Deno.consoleSize();
    if (rows > 0 && columns > 0) return { rows, cols: columns };
  } catch {
    // not a terminal
  }
  return { rows: 24, cols: 80 };
}

/** Runs `cmd` in `sb` attached to the local terminal; resolves with docker's exit code for it. */
export async function attach(sb: Sandbox, cmd: string, args: readonly string[], o: AttachOptions): Promise<number> {
  const p = await sb.execStream(cmd, {
    ...o.exec,
    args,
    stdin: o.interactive,
    tty: o.tty ? windowSize() : undefined,
  });
  using terminal = new RawTerminal(o.tty && o.interactive && Deno.stdin.isTerminal());
  const cleanups: (() => void)[] = [];
  if (o.tty) {
    const onResize = () => {
      const { rows, cols } = windowSize();
      p.resize(rows, cols).catch(() => {});
    };
    try {
      Deno.addSignalListener("SIGWINCH", onResize);
      cleanups.push(() => Deno.removeSignalListener("SIGWINCH", onResize));
    } catch {
      // no SIGWINCH here
    }
  }
  // Signals to krunbox itself: restore the terminal, pass the signal on, and let the exit follow.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const on = () => {
      terminal.restore();
      p.signal(sig === "SIGINT" ? 2 : sig === "SIGTERM" ? 15 : 1).catch(() => {});
    };
    Deno.addSignalListener(sig, on);
    cleanups.push(() => Deno.removeSignalListener(sig, on));
  }
  const input = o.interactive ? forwardStdin(p.stdin) : undefined;
  try {
    await Promise.all([
      p.stdout.pipeTo(Deno.stdout.writable, { preventClose: true }),
      p.stderr.pipeTo(Deno.stderr.writable, { preventClose: true }),
    ]);
    return exitCodeOfStatus(await p.exited);
  } finally {
    for (const c of cleanups) c();
    input?.cancel();
  }
}

/** Copies local stdin to the guest until EOF (then closes the guest's stdin) or until cancelled. */
function forwardStdin(to: WritableStream<Uint8Array>): { cancel(): void } {
  const reader = Deno.stdin.readable.getReader();
  const writer = to.getWriter();
  let cancelled = false;
  (async () => {
    try {
      while (!cancelled) {
        const { value, done } = await reader.read();
        if (done) break;
        await writer.write(value);
      }
      if (!cancelled) await writer.close();
    } catch {
      // the process ended while we were writing
    } finally {
      reader.releaseLock();
    }
  })();
  return {
    cancel() {
      cancelled = true;
      reader.cancel().catch(() => {});
    },
  };
}

/** Raw mode on the local terminal for as long as it lives; restored on dispose (idempotent). */
class RawTerminal implements Disposable {
  #raw = false;
  constructor(enable: boolean) {
    if (enable) {
      Deno.stdin.setRaw(true, { cbreak: false });
      this.#raw = true;
    }
  }
  /** Leaves raw mode (safe to call more than once). */
  restore(): void {
    if (!this.#raw) return;
    this.#raw = false;
    try {
      Deno.stdin.setRaw(false);
    } catch {
      // stdin closed under us
    }
  }
  [Symbol.dispose](): void {
    this.restore();
  }
}
