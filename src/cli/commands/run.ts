/**
 * `krunbox run` and `krunbox create`.
 *
 * `run [-it] [--rm] [flags] IMAGE [CMD…]` creates a sandbox attached to this
 * process, runs CMD (default: the image's entrypoint, else its shell) on the
 * local terminal, stops the sandbox and exits with CMD's code; `--rm` also
 * removes it. `run -d IMAGE` (no CMD) is `create`. `create [flags] IMAGE`
 * creates a detached sandbox and prints its name.
 *
 * @module
 */

import { Sandbox } from "../../sandbox/sandbox.ts";
import type { SandboxBuilder } from "../../sandbox/builder.ts";
import { InvalidConfigError } from "../../errors.ts";
import { type CommandSpec, type Parsed, positional, str } from "../command.ts";
import type { Command } from "../main.ts";
import { PullProgress, stderrSink, withStartProgress } from "../progress.ts";
import { applySandboxFlags, SANDBOX_HELP, SANDBOX_OPTIONS } from "../sandbox_flags.ts";
import { attach } from "../session.ts";
import { errorLine } from "../exit.ts";

const runSpec: CommandSpec = {
  name: "run",
  usage: "run [-it] [--rm] [-d] [options] IMAGE [COMMAND [ARG...]]",
  maxPositionals: 1,
  summary: "Create a sandbox from IMAGE (a registry reference, a directory or a disk image), run COMMAND in it " +
    "on this terminal, then stop it. Exits with COMMAND's exit code.",
  options: {
    ...SANDBOX_OPTIONS,
    interactive: { type: "boolean", short: "i" },
    tty: { type: "boolean", short: "t" },
    rm: { type: "boolean" },
    detach: { type: "boolean", short: "d" },
  },
  help: {
    ...SANDBOX_HELP,
    interactive: "keep stdin open and forward it",
    tty: "run the command on a terminal",
    rm: "remove the sandbox when the command ends",
    detach: "create the sandbox detached and print its name (no COMMAND)",
  },
  commandAfter: 1,
};

const createSpec: CommandSpec = {
  name: "create",
  usage: "create [options] IMAGE",
  maxPositionals: 1,
  summary: "Create a detached sandbox from IMAGE and print its name; it runs until `krunbox stop`.",
  options: SANDBOX_OPTIONS,
  help: SANDBOX_HELP,
};

function builderFor(spec: CommandSpec, p: Parsed): { name: string; builder: SandboxBuilder } {
  const image = positional(spec, p, 0, "IMAGE");
  const name = str(p, "name") ?? `sb-${crypto.randomUUID().slice(0, 8)}`;
  const progress = new PullProgress(stderrSink());
  const builder = applySandboxFlags(spec, Sandbox.builder(name).image(image), p).onPullProgress((e) =>
    progress.event(e)
  );
  return { name, builder };
}

/** `krunbox create`. */
export const create: Command = {
  spec: createSpec,
  async run(p) {
    const { name, builder } = builderFor(createSpec, p);
    const sb = await withStartProgress(name, builder.createDetached(), stderrSink());
    console.log(sb.name);
    await sb[Symbol.asyncDispose]();
    return 0;
  },
};

/** `krunbox run`. */
export const run: Command = {
  spec: runSpec,
  async run(p) {
    const { name, builder } = builderFor(runSpec, p);
    if (p.values.detach) {
      if (p.rest.length) {
        throw new InvalidConfigError("--detach", "takes no COMMAND: create the sandbox, then `krunbox exec` in it");
      }
      if (p.values.rm) throw new InvalidConfigError("--rm", "cannot be combined with --detach");
      return await create.run(p);
    }
    const sb = await withStartProgress(name, builder.create(), stderrSink());
    let code: number;
    try {
      const config = sb.config();
      const [cmd, ...args] = p.rest.length ? p.rest : (config.entrypoint?.length ? config.entrypoint : [config.shell]);
      code = await attach(sb, cmd, args, { interactive: !!p.values.interactive, tty: !!p.values.tty });
    } finally {
      await sb.stopAndWait().catch(() => {}); // disposal below kills what does not stop
      if (p.values.rm) await sb.removePersisted().catch((e) => console.error(errorLine(e)));
      await sb[Symbol.asyncDispose]();
    }
    return code;
  },
};
