/**
 * zstd compression for tests and benchmarks, with the `zstd` CLI (Debian
 * package `zstd`; krunbox itself only decompresses, through libzstd).
 *
 * @module
 */

/**
 * `bytes` compressed by `zstd -c [args]`, or undefined when the CLI is
 * missing or fails.
 *
 * @example
 * ```ts
 * import { zstdCompress } from "./zstd.ts";
 * const z = await zstdCompress(new TextEncoder().encode("hello"), ["-19"]);
 * console.log(z?.length ?? "no zstd CLI");
 * ```
 */
export async function zstdCompress(bytes: Uint8Array, args: string[] = []): Promise<Uint8Array | undefined> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("zstd", { args: ["-q", "-c", ...args], stdin: "piped", stdout: "piped" }).spawn();
  } catch {
    return undefined;
  }
  // Read while writing: zstd stops reading once its output pipe is full.
  const output = child.output();
  const w = child.stdin.getWriter();
  await w.write(bytes).catch(() => {});
  await w.close().catch(() => {});
  const out = await output;
  return out.success ? out.stdout : undefined;
}
