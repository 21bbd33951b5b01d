/**
 * The sandbox database: SQLite (`node:sqlite`) in WAL mode with a busy
 * timeout, so several caller processes and runners use it at once. The
 * schema is versioned with `PRAGMA user_version` and migrated forward; a
 * database of another application (its `application_id` differs) or an
 * unreadable file is refused with a {@link StateError}, never overwritten.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { StateError } from "../errors.ts";
import { PRIVATE_FILE_MODE } from "./private.ts";

/** `PRAGMA application_id` of krunbox databases ("krbx"). */
const APPLICATION_ID = 0x6b726278;

/** Forward migrations; index + 1 is the schema version after each. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE sandboxes (
     name        TEXT PRIMARY KEY,
     config      TEXT NOT NULL,
     status      TEXT NOT NULL,
     backend     TEXT,
     detached    INTEGER NOT NULL DEFAULT 0,
     stop_reason TEXT,
     boot_ms     REAL,
     created_at  INTEGER NOT NULL,
     updated_at  INTEGER NOT NULL
   ) STRICT;`,
  `CREATE TABLE images (
     reference       TEXT PRIMARY KEY,
     manifest_digest TEXT NOT NULL,
     size            INTEGER NOT NULL,
     pulled_at       INTEGER NOT NULL
   ) STRICT;
   ALTER TABLE sandboxes ADD COLUMN image_digest TEXT;`,
];

/** Lifecycle states as stored. `creating` exists only while booting. */
export type StoredStatus = "creating" | "running" | "draining" | "stopped" | "crashed";

/** One row of the sandboxes table. */
export interface SandboxRow {
  readonly name: string;
  readonly config: string;
  readonly status: StoredStatus;
  readonly backend: string | null;
  readonly detached: boolean;
  readonly stopReason: string | null;
  readonly bootMs: number | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

interface RawRow {
  name: string;
  config: string;
  status: StoredStatus;
  backend: string | null;
  detached: number;
  stop_reason: string | null;
  boot_ms: number | null;
  created_at: number;
  updated_at: number;
}

function fromRaw(r: RawRow): SandboxRow {
  return {
    name: r.name,
    config: r.config,
    status: r.status,
    backend: r.backend,
    detached: r.detached !== 0,
    stopReason: r.stop_reason,
    bootMs: r.boot_ms,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
  };
}

/** One image reference of the images table. */
export interface ImageRow {
  readonly reference: string;
  readonly manifestDigest: string;
  readonly size: number;
  readonly pulledAt: Date;
}

interface RawImage {
  reference: string;
  manifest_digest: string;
  size: number;
  pulled_at: number;
}

function imageFromRaw(r: RawImage): ImageRow {
  return { reference: r.reference, manifestDigest: r.manifest_digest, size: r.size, pulledAt: new Date(r.pulled_at) };
}

/**
 * An open store. Close it (or `using`) when done.
 *
 * @example
 * ```ts
 * import { Store } from "./db.ts";
 * const dir = await Deno.makeTempDir();
 * using store = Store.open(`${dir}/db.sqlite`);
 * console.log(store.list().length); // 0: a new store has no sandboxes
 * if (store.list().length !== 0) throw new Error("not empty");
 * ```
 */
export class Store implements Disposable {
  private constructor(readonly db: DatabaseSync, readonly path: string) {}

  /** Opens (creating 0600 and migrating) the database at `path`; its -wal and -shm files are 0600 too. */
  static open(path: string): Store {
    let db: DatabaseSync;
    try {
      // 0600 before SQLite opens it: it gives its -wal and -shm the database file's mode.
      Deno.openSync(path, { read: true, write: true, create: true, mode: PRIVATE_FILE_MODE }).close();
      for (const p of [path, `${path}-wal`, `${path}-shm`]) {
        try {
          Deno.chmodSync(p, PRIVATE_FILE_MODE);
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        }
      }
      db = new DatabaseSync(path);
      db.exec("PRAGMA busy_timeout = 10000");
      db.exec("PRAGMA journal_mode = WAL");
      db.exec("PRAGMA synchronous = NORMAL");
    } catch (cause) {
      throw new StateError(
        `cannot open the krunbox database ${path}: ${(cause as Error).message}; check that KRUNBOX_HOME is writable`,
        { cause },
      );
    }
    const store = new Store(db, path);
    try {
      store.#migrate();
    } catch (e) {
      db.close();
      throw e;
    }
    return store;
  }

  #migrate() {
    let appId: number;
    let version: number;
    try {
      appId = (this.db.prepare("PRAGMA application_id").get() as { application_id: number }).application_id;
      version = (this.db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
    } catch (cause) {
      throw new StateError(`${this.path} is not a SQLite database (corrupt?); move it away to start afresh`, { cause });
    }
    const tables = this.db.prepare("SELECT count(*) AS n FROM sqlite_master").get() as { n: number };
    if (appId !== APPLICATION_ID && !(appId === 0 && version === 0 && tables.n === 0)) {
      throw new StateError(
        `${this.path} is not a krunbox database (application_id ${appId}); set KRUNBOX_HOME elsewhere`,
      );
    }
    if (version > MIGRATIONS.length) {
      throw new StateError(
        `${this.path} has schema ${version}, newer than this krunbox (${MIGRATIONS.length}); upgrade krunbox`,
      );
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const now = (this.db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
        if (now === v) {
          this.db.exec(MIGRATIONS[v]);
          this.db.exec(`PRAGMA application_id = ${APPLICATION_ID}`);
          this.db.exec(`PRAGMA user_version = ${v + 1}`);
        }
        this.db.exec("COMMIT");
      } catch (e) {
        this.db.exec("ROLLBACK");
        throw new StateError(`migrating ${this.path} to schema ${v + 1} failed: ${(e as Error).message}`, { cause: e });
      }
    }
  }

  /** Inserts a new sandbox; false when the name is taken. */
  insert(name: string, config: string, status: StoredStatus, detached: boolean): boolean {
    const now = Date.now();
    const r = this.db.prepare(
      "INSERT OR IGNORE INTO sandboxes (name, config, status, detached, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
    ).run(name, config, status, detached ? 1 : 0, now, now);
    return Number(r.changes) === 1;
  }

  /** One sandbox, or undefined. */
  get(name: string): SandboxRow | undefined {
    const r = this.db.prepare("SELECT * FROM sandboxes WHERE name = ?").get(name) as RawRow | undefined;
    return r && fromRaw(r);
  }

  /** Every sandbox, by name. */
  list(): SandboxRow[] {
    return (this.db.prepare("SELECT * FROM sandboxes ORDER BY name").all() as unknown as RawRow[]).map(fromRaw);
  }

  /** Updates status fields of a sandbox (only those given). */
  update(
    name: string,
    fields: {
      status?: StoredStatus;
      backend?: string;
      detached?: boolean;
      stopReason?: string | null;
      bootMs?: number;
    },
  ): void {
    const sets: string[] = [];
    const values: (string | number | null)[] = [];
    const add = (col: string, v: string | number | null) => {
      sets.push(`${col} = ?`);
      values.push(v);
    };
    if (fields.status !== undefined) add("status", fields.status);
    if (fields.backend !== undefined) add("backend", fields.backend);
    if (fields.detached !== undefined) add("detached", fields.detached ? 1 : 0);
    if (fields.stopReason !== undefined) add("stop_reason", fields.stopReason);
    if (fields.bootMs !== undefined) add("boot_ms", fields.bootMs);
    add("updated_at", Date.now());
    this.db.prepare(`UPDATE sandboxes SET ${sets.join(", ")} WHERE name = ?`).run(...values, name);
  }

  /** Replaces the stored config. */
  setConfig(name: string, config: string): void {
    this.db.prepare("UPDATE sandboxes SET config = ?, updated_at = ? WHERE name = ?").run(config, Date.now(), name);
  }

  /**
   * Renames a sandbox row and replaces its config in one statement (a warm
   * pool's sandbox handed out under its user's name: created now, as far
   * as the user can tell); false when `from` is gone or `to` is taken.
   */
  rename(from: string, to: string, config: string): boolean {
    const now = Date.now();
    try {
      const r = this.db.prepare(
        "UPDATE sandboxes SET name = ?, config = ?, created_at = ?, updated_at = ? WHERE name = ?",
      ).run(to, config, now, now, from);
      return Number(r.changes) === 1;
    } catch (e) {
      if (/UNIQUE constraint/.test((e as Error).message)) return false;
      throw e;
    }
  }

  /** Deletes a sandbox row. */
  delete(name: string): void {
    this.db.prepare("DELETE FROM sandboxes WHERE name = ?").run(name);
  }

  /** Records (or re-points) an image reference. */
  putImage(reference: string, manifestDigest: string, size: number): void {
    this.db.prepare(
      "INSERT INTO images (reference, manifest_digest, size, pulled_at) VALUES (?, ?, ?, ?) " +
        "ON CONFLICT(reference) DO UPDATE SET manifest_digest = excluded.manifest_digest, size = excluded.size, " +
        "pulled_at = excluded.pulled_at",
    ).run(reference, manifestDigest, size, Date.now());
  }

  /** One image reference, or undefined. */
  getImage(reference: string): ImageRow | undefined {
    const r = this.db.prepare("SELECT * FROM images WHERE reference = ?").get(reference) as RawImage | undefined;
    return r && imageFromRaw(r);
  }

  /** Every image reference. */
  listImages(): ImageRow[] {
    return (this.db.prepare("SELECT * FROM images ORDER BY reference").all() as unknown as RawImage[]).map(
      imageFromRaw,
    );
  }

  /** Forgets an image reference. */
  deleteImage(reference: string): void {
    this.db.prepare("DELETE FROM images WHERE reference = ?").run(reference);
  }

  /** Records which image (manifest digest) a sandbox's root comes from. */
  setSandboxImage(name: string, manifestDigest: string): void {
    this.db.prepare("UPDATE sandboxes SET image_digest = ? WHERE name = ?").run(manifestDigest, name);
  }

  /** Manifest digests that some sandbox's root uses. */
  imagesInUse(): Set<string> {
    const rows = this.db.prepare("SELECT DISTINCT image_digest AS d FROM sandboxes WHERE image_digest IS NOT NULL")
      .all() as unknown as { d: string }[];
    return new Set(rows.map((r) => r.d));
  }

  /** Closes the database. */
  close(): void {
    if (this.db.isOpen) this.db.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
