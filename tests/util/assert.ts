/**
 * Minimal assertions for the tests (JSR's @std/assert is not reachable from
 * these machines). Deep equality via node:assert.
 *
 * @module
 */

import { deepStrictEqual, rejects } from "node:assert";

/** Fails unless `cond` is truthy. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  deepStrictEqual(actual, expected, message);
}

/** Awaits a promise that must reject with an instance of `type`; returns the error. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  type: abstract new (...args: never[]) => E,
  includes?: string,
): Promise<E> {
  let caught: unknown;
  await rejects(async () => {
    try {
      await fn();
    } catch (e) {
      caught = e;
      throw e;
    }
  });
  if (!(caught instanceof type)) throw new Error(`expected ${type.name}, got ${caught}`);
  if (includes && !(caught as Error).message.includes(includes)) {
    throw new Error(`expected message to include "${includes}", got "${(caught as Error).message}"`);
  }
  return caught as E;
}

/** Fails unless `fn` throws an instance of `type`; returns the error. */
export function assertThrows<E extends Error>(fn: () => unknown, type: abstract new (...args: never[]) => E): E {
  try {
    fn();
  } catch (e) {
    if (e instanceof type) return e as E;
    throw new Error(`expected ${type.name}, got ${e}`);
  }
  throw new Error(`expected ${type.name} to be thrown`);
}

/** Throws unless `text` matches `re`; the message quotes the text. */
export function assertMatch(text: string, re: RegExp, message?: string): void {
  if (!re.test(text)) throw new Error(`${message ?? "no match"}: expected ${re} in ${JSON.stringify(text)}`);
}
