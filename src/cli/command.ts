/**
 * What every CLI command is: its name, a one-line summary, its usage text
 * and flags (as `node:util` `parseArgs` options), and the function that runs
 * it. `parseCommand` turns argv into typed values, with `--help` on every
 * command and a usage error ({@link UsageError}) for a bad flag.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./command.ts";
 * const p = parseCommand({ name: "ls", usage: "ls [-a]", options: { all: { type: "boolean", short: "a" } } }, ["-a"]);
 * console.log(p.values.all); // true
 * ```
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { KrunboxError } from "../errors.ts";

/** The flags of a command, as `parseArgs` takes them, each with a line of help. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/** How a command is parsed and described. */
export interface CommandSpec {
  /** The command's name (`run`, `ls`, …). */
  readonly name: string;
  /** The usage line, without `krunbox `. */
  readonly usage: string;
  /** One line: what it does. */
  readonly summary?: string;
  /** Its flags. */
  readonly options: Options;
  /** Help for each flag, by its long name. */
  readonly help?: Readonly<Record<string, string>>;
  /**
   * Stop reading flags at the first positional after this many (`run image cmd…`:
   * 1; `exec name cmd…`: 1): everything after it is the guest command's, flags included.
   */
  readonly commandAfter?: number;
  /** The most positionals it takes (before the guest command); default: any number. */
  readonly maxPositionals?: number;
}

/** Parsed argv: flag values, positionals, and (with `commandAfter`) the guest command. */
export interface Parsed {
  /** Flag values by long name (`--help` included). */
  readonly values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  /** Positionals before the guest command. */
  readonly positionals: string[];
  /** The guest command and its arguments (empty without `commandAfter`). */
  readonly rest: string[];
}

/**
 * A command line krunbox cannot use (unknown flag, missing argument, bad
 * value): code `INVALID_CONFIG`, exit code 125, and a message that names the
 * command and where to read its usage.
 */
export class UsageError extends KrunboxError {
  /** `command` is the CLI command (`run`, `ls`, …); `detail` what is wrong. */
  constructor(readonly command: string, detail: string, options?: { cause?: unknown }) {
    super("INVALID_CONFIG", `${command}: ${detail}`, options);
  }
}

const HELP: Options = { help: { type: "boolean", short: "h" } };

/**
 * Parses `args` for `spec`. Throws {@link UsageError} naming the flag
 * for an unknown flag, a missing value or a stray positional.
 */
export function parseCommand(spec: CommandSpec, args: readonly string[]): Parsed {
  const options = { ...spec.options, ...HELP };
  let head = [...args];
  let rest: string[] = [];
  if (spec.commandAfter !== undefined) {
    const cut = commandStart(options, args, spec.commandAfter);
    if (cut !== undefined) {
      head = args.slice(0, cut + 1);
      rest = args.slice(cut + 1);
      if (rest[0] === "--") rest = rest.slice(1);
    }
  }
  try {
    const { values, positionals } = parseArgs({ args: head, options, allowPositionals: true, strict: true });
    if (spec.maxPositionals !== undefined && positionals.length > spec.maxPositionals && !values.help) {
      throw new UsageError(
        spec.name,
        `unexpected argument "${positionals[spec.maxPositionals]}" (usage: krunbox ${spec.usage})`,
      );
    }
    return { values: values as Parsed["values"], positionals, rest };
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const detail = (e as Error).message.replace(/\. To specify a positional argument.*$/s, "");
    throw new UsageError(spec.name, `${lower(detail)} (see \`krunbox ${spec.name} --help\`)`, { cause: e });
  }
}

/** The index in `args` of the positional that ends the flags (the `count`-th, 1-based), if any. */
function commandStart(options: Options, args: readonly string[], count: number): number | undefined {
  const { tokens } = parseArgs({ args: [...args], options, allowPositionals: true, strict: false, tokens: true });
  let seen = 0;
  for (const t of tokens) {
    if (t.kind === "option-terminator") return seen >= count ? t.index - 1 : undefined;
    if (t.kind === "positional" && ++seen === count) return t.index;
  }
  return undefined;
}

function lower(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

/** The `--help` text of a command. */
export function helpText(spec: CommandSpec): string {
  const lines = [`usage: krunbox ${spec.usage}`];
  if (spec.summary) lines.push("", spec.summary);
  const flags = Object.entries({ ...spec.options, ...HELP });
  if (flags.length) {
    lines.push("", "options:");
    const help = { ...spec.help, help: "print this help" } as Record<string, string>;
    const rows = flags.map(([long, o]) => {
      const name = `${o.short ? `-${o.short}, ` : "    "}--${long}${o.type === "string" ? " VALUE" : ""}`;
      return [name, help[long] ?? ""];
    });
    const width = Math.max(...rows.map((r) => r[0].length));
    for (const [n, h] of rows) lines.push(`  ${n.padEnd(width)}  ${h}`.trimEnd());
  }
  return lines.join("\n");
}

/** Positional `i` or a usage error naming `what`. */
export function positional(spec: CommandSpec, p: Parsed, i: number, what: string): string {
  const v = p.positionals[i];
  if (v === undefined) throw new UsageError(spec.name, `missing ${what} (usage: krunbox ${spec.usage})`);
  return v;
}

/** A string flag's values, whether given once or many times. */
export function strings(p: Parsed, name: string): string[] {
  const v = p.values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is string => typeof x === "string");
}

/** A string flag's last value. */
export function str(p: Parsed, name: string): string | undefined {
  return strings(p, name).at(-1);
}

/** A positive integer flag, or undefined. */
export function int(spec: CommandSpec, p: Parsed, name: string): number | undefined {
  const v = str(p, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) {
    throw new UsageError(spec.name, `--${name} wants a positive whole number, got "${v}"`);
  }
  return n;
}
