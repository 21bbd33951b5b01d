/**
 * `krunbox exec [-it] [-e K=V] [-w DIR] [-u USER] NAME CMD [ARG…]` and
 * `krunbox shell NAME` (an interactive login shell: `exec -it NAME $SHELL`).
 * Exit code: the command's own; 126/127 when it cannot start.
 *
 * @module
 */

import { Sandbox } from "../../sandbox/sandbox.ts";
import { InvalidConfigError } from "../../errors.ts";
import { type CommandSpec, type Parsed, positional, str, strings, UsageError } from "../command.ts";
import type { Command } from "../main.ts";
import { attach } from "../session.ts";

const execSpec: CommandSpec = {
  name: "exec",
  usage: "exec [-it] [-e KEY=VALUE] [-w DIR] [-u USER] NAME COMMAND [ARG...]",
  summary: "Run COMMAND in the running sandbox NAME. Exits with COMMAND's exit code.",
  options: {
    interactive: { type: "boolean", short: "i" },
    tty: { type: "boolean", short: "t" },
    env: { type: "string", short: "e", multiple: true },
    workdir: { type: "string", short: "w" },
    user: { type: "string", short: "u" },
  },
  help: {
    interactive: "keep stdin open and forward it",
    tty: "run the command on a terminal",
    env: "set an environment variable, KEY=VALUE (repeatable)",
    workdir: "working directory of the command",
    user: "user (name or uid) of the command",
  },
  commandAfter: 1,
};

async function runIn(name: string, cmd: string, args: string[], p: Parsed, tty: boolean, interactive: boolean) {
  const env: Record<string, string> = {};
  for (const kv of strings(p, "env")) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new InvalidConfigError("--env", `wants KEY=VALUE, got "${kv}"`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const user = str(p, "user");
  await using sb = await (await Sandbox.get(name)).connect();
  return await attach(sb, cmd, args, {
    interactive,
    tty,
    exec: {
      env,
      cwd: str(p, "workdir"),
      user: user === undefined ? undefined : /^\d+$/.test(user) ? Number(user) : user,
    },
  });
}

/** `krunbox exec`. */
export const exec: Command = {
  spec: execSpec,
  run(p) {
    const name = positional(execSpec, p, 0, "NAME");
    const [cmd, ...args] = p.rest;
    if (!cmd) throw new UsageError("exec", `missing COMMAND (usage: krunbox ${execSpec.usage})`);
    return runIn(name, cmd, args, p, !!p.values.tty, !!p.values.interactive);
  },
};

const shellSpec: CommandSpec = {
  name: "shell",
  usage: "shell NAME",
  maxPositionals: 1,
  summary: "An interactive shell (the sandbox's configured shell) in the running sandbox NAME.",
  options: execSpec.options,
  help: execSpec.help,
};

/** `krunbox shell`. */
export const shell: Command = {
  spec: shellSpec,
  async run(p) {
    const name = positional(shellSpec, p, 0, "NAME");
    const h = await Sandbox.get(name);
    const terminal = Deno.stdin.isTerminal();
    return await runIn(name, h.config().shell, [], p, terminal, true);
  },
};
