/**
 * Opening the store of the state home: the one call every layer above uses
 * (the sandbox lifecycle, `Images`), so where the database lives and how a
 * bad home is reported is decided once.
 *
 * @module
 */

import { StateError } from "../errors.ts";
import { Store } from "./db.ts";
import { homeLayout } from "./home.ts";
import { privateDir, tightenHome } from "./private.ts";

/**
 * Opens the store, creating the state home private (0700, see
 * ./private.ts) and tightening an existing one with looser modes. A
 * read-only or unusable home is a {@link StateError} that names the path and
 * the variable to set.
 *
 * @example
 * ```ts
 * import { openStore } from "./open.ts";
 * using store = await openStore();
 * console.log(store.list().length); // 0 in a new state home
 * ```
 */
export async function openStore(): Promise<Store> {
  const home = homeLayout();
  try {
    await privateDir(home.root);
    await privateDir(home.sandboxes);
    await privateDir(home.cache);
    await tightenHome(home.root);
  } catch (cause) {
    throw new StateError(`cannot create the state home ${home.root}: ${(cause as Error).message}; set KRUNBOX_HOME`, {
      cause,
    });
  }
  return Store.open(home.db);
}
