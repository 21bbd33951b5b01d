/**
 * A fresh state home for a test without a VM: `KRUNBOX_HOME` set to a new
 * temporary directory while `fn` runs, then restored and the directory
 * removed.
 *
 * @module
 */

/** Runs `fn` with KRUNBOX_HOME set to a fresh temp directory. */
export async function inHome(fn: (home: string) => Promise<void>): Promise<void> {
  const saved = Deno.env.get("KRUNBOX_HOME");
  const home = await Deno.makeTempDir({ prefix: "krunbox-home-" });
  Deno.env.set("KRUNBOX_HOME", home);
  try {
    await fn(home);
  } finally {
    if (saved === undefined) Deno.env.delete("KRUNBOX_HOME");
    else Deno.env.set("KRUNBOX_HOME", saved);
    await Deno.remove(home, { recursive: true });
  }
}
