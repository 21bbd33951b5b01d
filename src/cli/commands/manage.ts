/**
 * Sandbox management: `start`, `stop`, `rm [-f]`, `ls`/`ps [-a] [--json]`,
 * `logs [-f]` and `inspect`. Each takes names and works on each in turn; a
 * failing name is reported and the others still run (exit 125 if any failed).
 *
 * @module
 */

import { join } from "node:path";
import { Sandbox } from "../../sandbox/sandbox.ts";
import type { SandboxHandle } from "../../sandbox/handle.ts";
import { homeLayout } from "../../store/home.ts";
import { sandboxPaths } from "../../vmm/backend.ts";
import { type CommandSpec, type Parsed, positional } from "../command.ts";
import { eachPositional } from "../exit.ts";
import { ago, table } from "../format.ts";
import type { Command } from "../main.ts";
import type { ImageSource } from "../../sandbox/config.ts";
import { stderrSink, withStartProgress } from "../progress.ts";
import { writeAll } from "../../util/bytes.ts";
import { readSlice } from "../../util/nofollow.ts";

/** Runs `fn` for each NAME (see {@link eachPositional}). */
function eachName(spec: CommandSpec, p: Parsed, fn: (name: string) => Promise<void>): Promise<number> {
  return eachPositional(spec, p, "NAME", fn);
}

const startSpec: CommandSpec = { name: "start", usage: "start NAME [NAME...]", options: {} };
/** `krunbox start`. */
export const start: Command = {
  spec: startSpec,
  run: (p) =>
    eachName(startSpec, p, async (name) => {
      const sb = await withStartProgress(name, Sandbox.startDetached(name), stderrSink());
      await sb[Symbol.asyncDispose]();
      console.log(name);
    }),
};

const stopSpec: CommandSpec = { name: "stop", usage: "stop NAME [NAME...]", options: {} };
/** `krunbox stop`. */
export const stop: Command = {
  spec: stopSpec,
  run: (p) =>
    eachName(stopSpec, p, async (name) => {
      const h = await Sandbox.get(name);
      if (h.status === "running" || h.status === "draining") await h.stop();
      console.log(name);
    }),
};

const rmSpec: CommandSpec = {
  name: "rm",
  usage: "rm [-f] NAME [NAME...]",
  summary: "Remove stopped sandboxes and their state; -f stops running ones first.",
  options: { force: { type: "boolean", short: "f" } },
  help: { force: "stop (kill) a running sandbox first" },
};
/** `krunbox rm`. */
export const rm: Command = {
  spec: rmSpec,
  run: (p) =>
    eachName(rmSpec, p, async (name) => {
      if (p.values.force) {
        const h = await Sandbox.get(name);
        if (h.status === "running" || h.status === "draining") await h.kill();
      }
      await Sandbox.remove(name);
      console.log(name);
    }),
};

function imageText(i: ImageSource): string {
  return i.kind === "oci" ? i.reference : i.path;
}

/** The JSON shape of one sandbox in `ls --json` and `inspect`. */
function describe(h: SandboxHandle): Record<string, unknown> {
  return {
    name: h.name,
    status: h.status,
    createdAt: h.createdAt.toISOString(),
    updatedAt: h.updatedAt.toISOString(),
    stopReason: h.stopReason,
    config: h.config(),
  };
}

const lsSpec: CommandSpec = {
  name: "ls",
  usage: "ls [-a] [--json]",
  maxPositionals: 0,
  summary: "List running sandboxes; -a lists stopped and crashed ones too.",
  options: { all: { type: "boolean", short: "a" }, json: { type: "boolean" }, quiet: { type: "boolean", short: "q" } },
  help: { all: "show every sandbox, not only running ones", json: "print JSON (an array)", quiet: "print names only" },
};
/** `krunbox ls` (also `ps`, `list`). */
export const ls: Command = {
  spec: lsSpec,
  async run(p) {
    const all = await Sandbox.list();
    const shown = p.values.all ? all : all.filter((h) => h.status === "running" || h.status === "draining");
    if (p.values.json) {
      console.log(JSON.stringify(shown.map(describe), null, 2));
    } else if (p.values.quiet) {
      for (const h of shown) console.log(h.name);
    } else {
      const rows = shown.map((h) => {
        const c = h.config();
        const status = h.status === "running" || h.status === "draining"
          ? h.status
          : `${h.status} ${ago(h.updatedAt)}${h.stopReason ? ` (${h.stopReason})` : ""}`;
        return [h.name, imageText(c.image), String(c.cpus), `${c.memoryMib} MiB`, ago(h.createdAt), status];
      });
      console.log(table(["NAME", "IMAGE", "CPUS", "MEMORY", "CREATED", "STATUS"], rows));
    }
    return 0;
  },
};

const inspectSpec: CommandSpec = {
  name: "inspect",
  usage: "inspect NAME [NAME...]",
  summary: "Print each sandbox's config and state as JSON (an array, like docker inspect).",
  options: {},
};
/** `krunbox inspect`. */
export const inspect: Command = {
  spec: inspectSpec,
  async run(p) {
    const out: Record<string, unknown>[] = [];
    const code = await eachName(inspectSpec, p, async (name) => {
      out.push(describe(await Sandbox.get(name)));
    });
    console.log(JSON.stringify(out, null, 2));
    return code;
  },
};

const logsSpec: CommandSpec = {
  name: "logs",
  usage: "logs [-f] NAME",
  maxPositionals: 1,
  summary: "Print a sandbox's console log (the guest kernel and agent) and its runner log; -f follows them.",
  options: { follow: { type: "boolean", short: "f" }, runner: { type: "boolean" } },
  help: { follow: "keep printing as the logs grow, until the sandbox stops", runner: "the runner log only" },
};
/** `krunbox logs`. */
export const logs: Command = {
  spec: logsSpec,
  async run(p) {
    const name = positional(logsSpec, p, 0, "NAME");
    await Sandbox.get(name); // a NotFoundError for an unknown name
    const paths = sandboxPaths(join(homeLayout().sandboxes, name));
    const files = p.values.runner ? [paths.runnerLog] : [paths.consoleLog, paths.runnerLog];
    const offsets = new Map<string, number>();
    const drain = async () => {
      for (const f of files) offsets.set(f, await copyFrom(f, offsets.get(f) ?? 0));
    };
    // Each log's older part first (console.log.1, then console.log): the bounded logs rotate into it.
    for (const f of files) {
      await copyFrom(`${f}.1`, 0);
      offsets.set(f, await copyFrom(f, 0));
    }
    if (!p.values.follow) return 0;
    while (true) {
      const { status } = await Sandbox.get(name);
      await new Promise((r) => setTimeout(r, 250));
      await drain();
      if (status !== "running" && status !== "draining") return 0;
    }
  },
};

/**
 * Copies `path` from `offset` to stdout; returns the new offset (a missing file is empty). Read in bounded chunks,
 * never through a link or from a FIFO its runner left (src/util/nofollow.ts).
 */
async function copyFrom(path: string, offset: number): Promise<number> {
  for (let at = offset;;) {
    const slice = readSlice(path, at, 64 * 1024);
    if (!slice) return at;
    if (slice.size < at) at = 0; // truncated or rotated
    else if (slice.bytes.length === 0) return at;
    else {
      await writeAll(Deno.stdout, slice.bytes);
      at += slice.bytes.length;
    }
  }
}
