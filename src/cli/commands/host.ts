/**
 * `krunbox doctor` and `krunbox setup`: the host's prerequisites, checked
 * (each with its fix) or provisioned (idempotent, cached).
 *
 * @module
 */

import type { CommandSpec } from "../command.ts";
import type { Command } from "../main.ts";

const doctorSpec: CommandSpec = {
  name: "doctor",
  usage: "doctor",
  maxPositionals: 0,
  summary: "Check every prerequisite, say how to fix each, and say which backend `auto` picks.",
  options: {},
};
/** `krunbox doctor`. */
export const doctor: Command = {
  spec: doctorSpec,
  async run() {
    const { main } = await import("../../host/doctor.ts");
    return await main();
  },
};

const setupSpec: CommandSpec = {
  name: "setup",
  usage: "setup",
  maxPositionals: 0,
  summary: "Provision what krunbox needs under $KRUNBOX_HOME/assets (idempotent; cached by version).",
  options: {},
};
/** `krunbox setup`. */
export const setup: Command = {
  spec: setupSpec,
  async run() {
    const { main } = await import("../../host/setup.ts");
    return await main();
  },
};
