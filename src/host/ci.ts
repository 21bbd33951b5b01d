/**
 * Whether this run must have every required part: under CI (`CI=true`, as
 * CI services set it; `deno task test --require` sets it for its children)
 * a missing part fails setup and the tests instead of being skipped.
 *
 * @module
 */

/**
 * True under CI: `CI` is set to anything but `false`, `0`, `no` or empty.
 *
 * @example
 * ```ts
 * import { requireAll } from "./ci.ts";
 * if (requireAll()) console.log("every required part must be present"); // printed under CI=true or --require
 * ```
 */
export function requireAll(): boolean {
  const v = (Deno.env.get("CI") ?? "").trim().toLowerCase();
  return v !== "" && v !== "false" && v !== "0" && v !== "no";
}
