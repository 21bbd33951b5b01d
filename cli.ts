/**
 * The krunbox command line, over the same API a program uses, with docker's
 * habits: `run [-it] [--rm]`, `create`, `start`, `stop`, `rm [-f]`,
 * `ls`/`ps [-a] [--json]`, `exec [-it]`, `shell`, `logs [-f]`, `inspect`,
 * `metrics [--watch]`, `pull`, `images`, `rmi`, `prune`, `doctor`, `setup`;
 * `--help` on every command and `--version`. Exit codes are docker's: the
 * guest command's own, 125 for krunbox's errors, 126/127 when the command
 * cannot start.
 *
 * From a checkout: `./dev krunbox …`; installed: `deno install -g -A -n
 * krunbox jsr:@krunbox/krunbox/cli`, or the single binary from `deno task
 * compile`.
 *
 * @example
 * ```ts
 * import { main } from "./cli.ts";
 * const code = await main(["--version"]);
 * console.log(code); // 0
 * ```
 *
 * @module
 */

export { main } from "./src/cli/main.ts";
import { main } from "./src/cli/main.ts";

if (import.meta.main) Deno.exit(await main(Deno.args));
