/**
 * Closing resources that may already be closed.
 *
 * @module
 */

/**
 * Closes a connection, listener or file, ignoring "already closed".
 *
 * @example
 * ```ts
 * import { closeQuietly } from "./close.ts";
 * const l = Deno.listen({ port: 0 });
 * closeQuietly(l);
 * closeQuietly(l); // no error
 * ```
 */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // already closed
  }
}
