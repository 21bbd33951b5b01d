/**
 * Host processes as `/proc/PID/stat` shows them: alive or not, their parent,
 * their CPU time and memory. One parser for every reader.
 *
 * @module
 */

/**
 * The fields of a `/proc/PID/stat` line after the command name (which may
 * hold spaces and parentheses): `[0]` is the state, `[1]` the parent pid,
 * `[11]`/`[12]` utime/stime, `[21]` the RSS in pages (proc(5), from field 3 on).
 *
 * @example
 * ```ts
 * import { statFields } from "./proc.ts";
 * console.log(statFields("42 (a (b) c) S 1 42 42 0")[1]); // "1"
 * ```
 */
export function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/**
 * Whether stat fields (from {@link statFields}) are a process that has
 * ended: a zombie (`Z`) or dead (`X`), its stat still readable.
 *
 * @example
 * ```ts
 * import { hasEnded, statFields } from "./proc.ts";
 * console.log(hasEnded(statFields(Deno.readTextFileSync("/proc/self/stat")))); // false
 * ```
 */
export function hasEnded(fields: readonly string[]): boolean {
  return fields[0] === "Z" || fields[0] === "X";
}

/**
 * The stat fields of a live process (not a zombie), or undefined.
 *
 * @example
 * ```ts
 * import { liveStat } from "./proc.ts";
 * console.log(liveStat(Deno.pid)?.[0]); // "R" or "S"
 * ```
 */
export function liveStat(pid: number): string[] | undefined {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return undefined;
  }
  const fields = statFields(stat);
  return hasEnded(fields) ? undefined : fields;
}

/**
 * Whether `pid` is a live process (a zombie is not).
 *
 * @example
 * ```ts
 * import { processAlive } from "./proc.ts";
 * console.log(processAlive(Deno.pid)); // true
 * ```
 */
export function processAlive(pid: number): boolean {
  return liveStat(pid) !== undefined;
}

/**
 * The parent of a live process, or undefined.
 *
 * @example
 * ```ts
 * import { parentPid } from "./proc.ts";
 * console.log(parentPid(Deno.pid) === Deno.ppid); // true
 * ```
 */
export function parentPid(pid: number): number | undefined {
  const fields = liveStat(pid);
  return fields ? Number(fields[1]) : undefined;
}
