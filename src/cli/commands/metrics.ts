/**
 * `krunbox metrics NAME [--watch] [--interval MS] [--json]`: one sample, or
 * a live table redrawn in place on a terminal (plain lines otherwise) until
 * the sandbox stops or Ctrl-C.
 *
 * @module
 */

import { Sandbox } from "../../sandbox/sandbox.ts";
import type { SandboxMetrics } from "../../metrics/snapshot.ts";
import { type CommandSpec, int, positional } from "../command.ts";
import { humanBytes, humanDuration, table } from "../format.ts";
import type { Command } from "../main.ts";

const spec: CommandSpec = {
  name: "metrics",
  usage: "metrics [--watch] [--interval MS] [--json] NAME",
  maxPositionals: 1,
  summary: "CPU, memory, disk and network of the running sandbox NAME.",
  options: {
    watch: { type: "boolean", short: "w" },
    interval: { type: "string" },
    json: { type: "boolean" },
  },
  help: {
    watch: "keep sampling (a live table) until the sandbox stops or Ctrl-C",
    interval: "milliseconds between samples with --watch (default 1000)",
    json: "one JSON object per sample",
  },
};

const HEADERS = ["CPU", "MEMORY", "LIMIT", "DISK READ", "DISK WRITE", "NET RX", "NET TX", "UPTIME"];

function row(m: SandboxMetrics): string[] {
  return [
    `${m.cpuPercent.toFixed(1)}%`,
    humanBytes(m.memoryBytes),
    humanBytes(m.memoryLimitBytes),
    humanBytes(m.diskReadBytes),
    humanBytes(m.diskWriteBytes),
    humanBytes(m.netRxBytes),
    humanBytes(m.netTxBytes),
    humanDuration(m.uptimeMs),
  ];
}

/** `krunbox metrics`. */
export const metrics: Command = {
  spec,
  async run(p) {
    const name = positional(spec, p, 0, "NAME");
    const json = !!p.values.json;
    const show = (m: SandboxMetrics, redraw: boolean) => {
      if (json) return console.log(JSON.stringify(m));
      const text = table(HEADERS, [row(m)]);
      console.log(redraw ? `\x1b[2A\x1b[J${text}` : text);
    };
    if (!p.values.watch) {
      show(await (await Sandbox.get(name)).metrics(), false);
      return 0;
    }
    await using sb = await (await Sandbox.get(name)).connect();
    const live = Deno.stdout.isTerminal();
    let first = true;
    for await (const m of sb.metricsStream(int(spec, p, "interval") ?? 1000)) {
      show(m, live && !first);
      first = false;
    }
    return 0;
  },
};
