/**
 * The runner's store, opened while the VM boots: loading `node:sqlite`
 * (Deno's Node compatibility layer) costs tens of milliseconds of the
 * runner's start, and nothing is written to the store before the VMM runs
 * but a failed boot's status. Writes made before it is open are kept in
 * order and applied when it opens.
 *
 * @module
 */

import type { Store } from "../store/db.ts";

/** The store's `update` fields. */
export type StatusFields = Parameters<Store["update"]>[1];

/**
 * A store opened on first {@link DeferredStore.open}, its earlier updates
 * queued.
 *
 * @example
 * ```ts ignore
 * // Needs a state home; the runner (src/vmm/runner.ts) uses it for every boot.
 * import { DeferredStore } from "./deferred_store.ts";
 * using store = new DeferredStore("/root/.krunbox/db.sqlite");
 * store.update("job-1", { status: "crashed" }); // queued
 * await store.open(); // applied
 * ```
 */
export class DeferredStore implements Disposable {
  #store: Store | undefined;
  #opening: Promise<void> | undefined;
  readonly #queued: [string, StatusFields][] = [];

  /** A store of the database at `db`, not opened yet. */
  constructor(readonly db: string) {}

  /** Updates a sandbox's fields now, or when the store opens. */
  update(name: string, fields: StatusFields): void {
    if (this.#store) this.#store.update(name, fields);
    else this.#queued.push([name, fields]);
  }

  /** Opens the store (once) and applies the queued updates. */
  open(): Promise<void> {
    return this.#opening ??= (async () => {
      const { Store } = await import("../store/db.ts");
      const store = Store.open(this.db);
      for (const [name, fields] of this.#queued.splice(0)) store.update(name, fields);
      this.#store = store;
    })();
  }

  /** Closes the store if it was opened. */
  [Symbol.dispose](): void {
    this.#store?.[Symbol.dispose]();
  }
}
