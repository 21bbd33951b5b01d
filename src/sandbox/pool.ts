/**
 * Warm pools: N sandboxes of one image and shape kept booted, so that a
 * matching `create()` is a handout instead of a boot (`Sandbox.pool`).
 *
 * How a pooled sandbox becomes the user's:
 * - It boots through the one boot path (`createAndLaunch`) under an internal
 *   name, `.pool-` and 16 hex digits ({@link isPoolName}), which no user name
 *   can be (those start with a letter or digit): its row and its directory
 *   `sandboxes/.pool-…` are its own, `Sandbox.list` (so `krunbox ls`) skips
 *   it, and nothing counts it as the user's.
 * - A matching `create()` (attached, same config but for name, hostname, env,
 *   patches and scripts) takes a ready one under the requested name's lock:
 *   the name is cleared as for a cold create (taken: `AlreadyExistsError`;
 *   `replace()`: the old one goes), then one `guest.configure` sets the
 *   guest's hostname, env, clock and a fresh random seed — and proves the
 *   guest alive; then `sandboxes/<name>` becomes a link to the pooled
 *   directory (the pooled runner, VMM and virtiofsd keep the paths they were
 *   started with; every path derived from the name reaches the same files),
 *   and the host moves its row to the name with the user's config while the
 *   runner reports under the new name from then on (`runner.rename`; the
 *   runner never opens the database). From then on it is an ordinary sandbox of that name:
 *   stop, start, remove and `replace()` work as for any other (removing it
 *   removes the link and the pooled directory).
 * - A pooled sandbox whose runner or VMM is gone, or that does not answer
 *   its handout within `DEFAULTS.poolHandoutTimeoutMs`, is killed and
 *   replaced, never handed out; the next one is tried, and with none left
 *   `create()` boots cold.
 * - A new pooled guest runs one `shell -c true` and one `guest.configure`
 *   (its own hostname and env again) before it counts as ready: what the
 *   first spawn and the first configure after a boot cost (the shell's pages
 *   in the guest's page cache, the first /etc/hostname write) is paid then,
 *   not by the handout or the user's first exec.
 * - Every handout starts a refill in the background (ready + booting ≤
 *   size), `refillDelayMs` later (default 100 ms; one timer for a burst), so
 *   that a new boot's CPU burst does not land on the handout and the
 *   caller's first commands. Boots that keep failing stop the refills (`lastError`).
 * - Pooled sandboxes are attached to the process that made the pool (they
 *   die with it) and are killed and deleted with the pool (`close()`,
 *   `await using`); sandboxes already handed out are the user's and stay.
 *   Rows and directories a dead process's pool left behind are deleted by
 *   the next pool.
 *
 * @module
 */

import { InvalidConfigError, StateError } from "../errors.ts";
import { isLocked } from "../store/lock.ts";
import { checkGuestEnv, configureGuest } from "../agent/configure.ts";
import { runToCompletion } from "../agent/exec.ts";
import { DEFAULTS } from "../settings.ts";
import { openStore } from "../store/open.ts";
import type { Store } from "../store/db.ts";
import { guestHostname, isPoolName, POOL_NAME_PREFIX, type SandboxConfig } from "./config.ts";
import type { Booted, Launched } from "./launch.ts";
import { loadLaunch } from "./handle.ts";
import { removeEntry } from "../util/nofollow.ts";
import { parentPid, processAlive } from "../util/proc.ts";
import type { Sandbox } from "./sandbox.ts";
import { deleteState, isLive, linkPooledDir, pathsOf, reconcile, withNameLock } from "./state.ts";

/** The fields a `create()` may set differently from its pool's template and still be handed a pooled sandbox. */
const PER_SANDBOX = ["name", "hostname", "env", "patches", "scripts"] as const;

/** One booted sandbox of a pool. */
interface Entry {
  readonly name: string;
  /** The config it booted with (the image's defaults included). */
  readonly config: SandboxConfig;
  readonly launched: Launched;
  /** Set when its runner process has exited. */
  exited: boolean;
}

/** Counters of a pool's life, for tests and benchmarks. */
export interface PoolStats {
  /** Sandboxes ready to hand out now. */
  readonly ready: number;
  /** Sandboxes booting now. */
  readonly booting: number;
  /** Sandboxes handed out so far. */
  readonly handedOut: number;
  /** Pooled sandboxes found dead (or not answering) and replaced instead of handed out. */
  readonly replaced: number;
  /** Boots that failed. */
  readonly bootFailures: number;
}

/** The pools alive in this process, in creation order: `create()` asks each. */
const pools = new Set<WarmPool>();

/**
 * A config as JSON with sorted keys and the per-sandbox fields left out:
 * two configs match when these are equal.
 */
function shapeKey(config: SandboxConfig): string {
  const rest: Record<string, unknown> = { ...config };
  for (const k of PER_SANDBOX) delete rest[k];
  return JSON.stringify(
    rest,
    (_k, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
        : v,
  );
}

function randomName(): string {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return POOL_NAME_PREFIX + [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** Sends a signal to a process that may have exited meanwhile. */
function killQuietly(kill: () => void): void {
  try {
    kill();
  } catch {
    // it exited meanwhile
  }
}

/** Waits until `pid` is gone (reaped or a zombie), at most `ms`. */
async function ended(pid: number, ms: number): Promise<void> {
  const until = performance.now() + ms;
  while (processAlive(pid) && performance.now() < until) await new Promise((r) => setTimeout(r, 5));
}

/** A pooled sandbox that cannot be handed out (dead, or not answering). */
class DeadEntry extends Error {}

/**
 * A warm pool. Made by `Sandbox.pool(…)`; see the module doc for how a
 * handout works.
 *
 * @example
 * ```ts ignore
 * // Needs VMs; tests/e2e/pool_test.ts runs the same.
 * import { Sandbox } from "@krunbox/krunbox";
 * await using pool = Sandbox.pool({ image: "/srv/rootfs", memory: 256, size: 2 });
 * await pool.ready();
 * await using sb = await Sandbox.builder("job-1").image("/srv/rootfs").memory(256).env("MODE", "ci").create();
 * console.log((await sb.exec("hostname")).stdout); // job-1
 * ```
 */
export class WarmPool implements AsyncDisposable {
  readonly #template: SandboxConfig;
  readonly #key: string;
  readonly #size: number;
  readonly #ready: Entry[] = [];
  readonly #booting = new Set<Promise<void>>();
  readonly #closing = new Set<Promise<void>>();
  /** Handouts in progress (close waits for them before it closes the store). */
  readonly #takes = new Set<Promise<void>>();
  #closed = false;
  #failuresInRow = 0;
  #lastError: unknown;
  #waiters: (() => void)[] = [];
  #sweep: Promise<void>;
  #stats = { handedOut: 0, replaced: 0, bootFailures: 0 };
  readonly #refillDelayMs: number;
  #refillTimer: ReturnType<typeof setTimeout> | undefined;
  /** Open for the pool's life: a handout does not pay for opening the database. */
  #store: Promise<Store> | undefined;

  /** @internal Use `Sandbox.pool(…)`. `template` is a built config (its name, hostname and env are not used). */
  constructor(template: SandboxConfig, size: number, refillDelayMs: number = DEFAULTS.poolRefillDelayMs) {
    if (!Number.isFinite(refillDelayMs) || refillDelayMs < 0) {
      throw new InvalidConfigError("pool.refillDelayMs", `must be a number ≥ 0, got ${refillDelayMs}`);
    }
    this.#refillDelayMs = refillDelayMs;
    if (!Number.isSafeInteger(size) || size < 1 || size > DEFAULTS.poolMaxSize) {
      throw new InvalidConfigError("pool.size", `must be an integer from 1 to ${DEFAULTS.poolMaxSize}, got ${size}`);
    }
    if (template.secrets.length > 0) {
      throw new InvalidConfigError("pool", "a pool cannot hold sandboxes with secrets (their values are per sandbox)");
    }
    this.#template = { ...template, env: {}, patches: [], scripts: {}, hostname: "pool" };
    this.#key = shapeKey(this.#template);
    this.#size = size;
    pools.add(this);
    this.#sweep = sweepLeftovers().catch(() => {});
    this.#fill();
  }

  /** How many sandboxes the pool keeps ready. */
  get size(): number {
    return this.#size;
  }

  /** The config every pooled sandbox boots with (internal name aside). */
  get template(): SandboxConfig {
    return this.#template;
  }

  /** What the pool holds and has done. */
  get stats(): PoolStats {
    return { ready: this.#ready.length, booting: this.#booting.size, ...this.#stats };
  }

  /** The last boot failure, when refills stopped because of failures (undefined while they work). */
  get lastError(): unknown {
    return this.#failuresInRow >= DEFAULTS.poolMaxBootFailures ? this.#lastError : undefined;
  }

  /** The host pids of the VMMs of the sandboxes ready now (for tests and diagnostics). */
  get vmmPids(): number[] {
    return this.#ready.map((e) => e.launched.ready.vmmPid);
  }

  /**
   * Resolves when `count` (default: the pool's size) sandboxes are ready;
   * rejects with the boot error once refills have stopped for failures, or
   * when the pool is closed.
   */
  async ready(count: number = this.#size): Promise<void> {
    for (;;) {
      if (this.#closed) throw new StateError("the pool is closed");
      if (this.#ready.length >= Math.min(count, this.#size)) return;
      const err = this.lastError;
      if (err !== undefined) throw err;
      const woken = new Promise<void>((r) => this.#waiters.push(r));
      this.#holdWhileWaited();
      await woken;
    }
  }

  /** Whether a `create()` of `config` may be handed a sandbox of this pool. */
  matches(config: SandboxConfig): boolean {
    return !this.#closed && shapeKey(config) === this.#key;
  }

  /**
   * Hands out a ready sandbox as `requested` (attached), or undefined when
   * none is ready (the caller boots cold). Throws what a cold create would
   * for the name (`AlreadyExistsError`, …).
   *
   * @internal Called by `SandboxBuilder.create()`.
   */
  async take(requested: SandboxConfig, replace: boolean, sandbox: typeof Sandbox): Promise<Sandbox | undefined> {
    if (this.#closed || this.#ready.length === 0) return undefined;
    const p = (async () => {
      const store = await (this.#store ??= openStore());
      try {
        return await this.#takeLocked(store, requested, replace, sandbox);
      } finally {
        this.#scheduleFill();
      }
    })();
    const settled = p.then(() => {}, () => {});
    this.#takes.add(settled);
    try {
      return await p;
    } finally {
      this.#takes.delete(settled);
    }
  }

  async #takeLocked(
    store: Store,
    requested: SandboxConfig,
    replace: boolean,
    sandbox: typeof Sandbox,
  ): Promise<Sandbox | undefined> {
    return await withNameLock(requested.name, async () => {
      await (await loadLaunch()).clearName(store, requested.name, replace);
      for (;;) {
        const entry = this.#ready.shift();
        if (!entry) return undefined;
        try {
          const sb = await this.#handOut(entry, requested, store, sandbox);
          this.#stats.handedOut++;
          return sb;
        } catch (e) {
          if (!(e instanceof DeadEntry)) {
            // Nothing was applied (a bad field): the sandbox goes back.
            if (!entry.exited && !this.#closed) this.#ready.unshift(entry);
            else this.#discard(entry);
            throw e;
          }
          this.#stats.replaced++;
          this.#discard(entry);
        }
      }
    });
  }

  async #handOut(entry: Entry, requested: SandboxConfig, store: Store, sandbox: typeof Sandbox): Promise<Sandbox> {
    const { agent, ready } = entry.launched;
    if (entry.exited || agent.isClosed || !processAlive(ready.vmmPid)) throw new DeadEntry("gone");
    const config: SandboxConfig = {
      ...entry.config,
      name: requested.name,
      hostname: requested.hostname,
      env: { ...entry.config.env, ...requested.env },
      patches: requested.patches,
      scripts: requested.scripts,
    };
    // Refused here, before anything is applied (the agent would refuse it too, after the rename below).
    checkGuestEnv(config.env);
    await linkPooledDir(config.name, entry.name);
    // Both at once (one goes to the guest, one to its runner): the handout waits for the slower, not the sum.
    const timeoutMs = DEFAULTS.poolHandoutTimeoutMs;
    const [configured, renamed] = await Promise.allSettled([
      configureGuest(agent, { hostname: guestHostname(config), env: config.env, time: true, seed: true }, {
        timeoutMs,
      }),
      agent.request("runner.rename", { name: config.name }, { timeoutMs }),
    ]);
    const failed = [configured, renamed].find((r) => r.status === "rejected");
    // The row moves here, by the host, under the name's lock: the runner never opens the database.
    if (failed || !store.rename(entry.name, config.name, JSON.stringify(config))) {
      deleteLink(config.name);
      throw new DeadEntry("the handout failed", failed ? { cause: failed.reason } : undefined);
    }
    return sandbox.fromLaunch(config, entry.launched, true);
  }

  /**
   * Refills `refillDelayMs` after a handout (one timer for a burst of them):
   * a new boot's runner, disk and VMM start do not share the CPU with the
   * handout and the caller's first commands.
   */
  #scheduleFill(): void {
    if (this.#refillTimer !== undefined || this.#closed) return;
    this.#refillTimer = setTimeout(() => {
      this.#refillTimer = undefined;
      this.#fill();
    }, this.#refillDelayMs);
    this.#holdWhileWaited();
  }

  /**
   * A caller waiting in ready() keeps the program alive, as an awaited boot
   * does: the refill timer, unref'd so an idle pool never holds a program
   * open, is ref'd exactly while anyone waits (else the event loop could end
   * with ready() pending, when the timer was all that was left).
   */
  #holdWhileWaited(): void {
    if (this.#refillTimer === undefined) return;
    if (this.#waiters.length > 0) Deno.refTimer(this.#refillTimer);
    else Deno.unrefTimer(this.#refillTimer);
  }

  /** Boots sandboxes until ready + booting reaches the size. */
  #fill(): void {
    while (
      !this.#closed && this.#failuresInRow < DEFAULTS.poolMaxBootFailures &&
      this.#ready.length + this.#booting.size < this.#size
    ) {
      const p: Promise<void> = this.#bootOne().finally(() => {
        this.#booting.delete(p);
        this.#wake();
        // A failed boot is tried again after the refill delay (until poolMaxBootFailures in a row): without this, a
        // pool one short after a failure stayed short, and ready() waited for a boot nobody would start.
        if (this.#ready.length + this.#booting.size < this.#size) this.#scheduleFill();
      });
      this.#booting.add(p);
    }
  }

  async #bootOne(): Promise<void> {
    await this.#sweep;
    const name = randomName();
    let booted: Booted;
    try {
      booted = await (await loadLaunch()).createAndLaunch({ ...this.#template, name }, false, false);
    } catch (e) {
      this.#stats.bootFailures++;
      this.#failuresInRow++;
      this.#lastError = e;
      return;
    }
    this.#failuresInRow = 0;
    const { launched, config } = booted;
    // The pool holds it without keeping this process alive: an idle pool does not stop a program from ending.
    launched.runner.unref();
    launched.agent.unrefWhenIdle();
    const entry: Entry = { name, config, launched, exited: false };
    await warmUp(entry);
    launched.runner.status.then(() => {
      entry.exited = true;
      const i = this.#ready.indexOf(entry);
      if (i >= 0) {
        this.#ready.splice(i, 1);
        this.#stats.replaced++;
        this.#discard(entry);
        // After the refill delay, as after a handout: a death seen while a handout runs does not put a boot's
        // CPU burst on it (the pool's other sandbox is likely the one being handed out).
        this.#scheduleFill();
      }
    });
    if (this.#closed) return this.#discard(entry);
    this.#ready.push(entry);
  }

  /** Kills a pooled sandbox and deletes its state (in the background; `close()` waits for it). */
  #discard(entry: Entry): void {
    const p: Promise<void> = (async () => {
      const { agent, runner } = entry.launched;
      if (!entry.exited) {
        // The pool unref'd it (an idle pool holds no program open); a discard in progress does, or the event loop
        // could end while close() waits here for a runner slow to exit.
        runner.ref();
        // One deadline for the request and the exit it causes: a runner that does not answer is not waited for twice.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const deadline = new Promise<false>((r) => timer = setTimeout(() => r(false), DEFAULTS.killWaitMs));
        agent.request("runner.kill", {}, { timeoutMs: DEFAULTS.killWaitMs }).catch(() => {});
        const gone = await Promise.race([runner.status.then(() => true), deadline]).finally(() => clearTimeout(timer));
        const vmm = entry.launched.ready.vmmPid;
        if (!gone) {
          // The VMM first, while it is surely this runner's child (a pid not reused), then the runner: left to its
          // pdeathsig, the VMM could still be dying when close() resolved.
          if (vmm !== runner.pid && parentPid(vmm) === runner.pid) killQuietly(() => Deno.kill(vmm, "SIGKILL"));
          killQuietly(() => runner.kill("SIGKILL"));
        }
        await runner.status.catch(() => {});
        await ended(vmm, DEFAULTS.killWaitMs);
      }
      await agent.close();
      using store = await openStore();
      await withNameLock(entry.name, () => deleteState(store, entry.name)).catch(() => {});
    })().finally(() => this.#closing.delete(p));
    this.#closing.add(p);
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    this.#holdWhileWaited();
    for (const r of w) r();
  }

  /**
   * Stops the pool: no more handouts or refills; every pooled sandbox not
   * handed out is killed and deleted (its processes gone when this
   * resolves). Handed-out sandboxes are not touched.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      clearTimeout(this.#refillTimer);
      pools.delete(this);
      for (const e of this.#ready.splice(0)) this.#discard(e);
      this.#wake();
    }
    while (this.#booting.size > 0 || this.#closing.size > 0 || this.#takes.size > 0) {
      await Promise.allSettled([...this.#booting, ...this.#closing, ...this.#takes]);
    }
    (await this.#store?.catch(() => undefined))?.close();
    this.#store = undefined;
  }

  /** {@link close}: `await using pool = Sandbox.pool(…)` ends the pool with its scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * One `shell -c true` and one `guest.configure` in a new pooled guest, so
 * that what a first exec and a handout pay once per boot (the agent's first
 * spawn, the shell's pages in the guest's page cache) is paid before it
 * counts as ready. A failure is not the pool's: an image without its shell
 * still serves execs of other programs.
 */
async function warmUp(entry: Entry): Promise<void> {
  const c = entry.config;
  const agent = entry.launched.agent;
  await runToCompletion(agent, { cmd: c.shell, args: ["-c", "true"], cwd: c.workdir, user: c.user }).catch(() => {});
  // The same call a handout makes (its own hostname and env again): the first one after a boot is the slow one.
  await configureGuest(agent, { hostname: guestHostname(c), env: c.env, time: true, seed: true }, {
    timeoutMs: DEFAULTS.poolHandoutTimeoutMs,
  }).catch(() => {});
}

/** Removes the link a failed handout made (never a real directory). */
function deleteLink(name: string): void {
  try {
    // Unlinked, never followed; a real directory there is refused (StateError) and stays.
    removeEntry(pathsOf(name).dir);
  } catch {
    // not a link of ours
  }
}

/**
 * Deletes the rows and directories of pooled sandboxes no runner holds any
 * more (a pool whose process died).
 */
async function sweepLeftovers(): Promise<void> {
  using store = await openStore();
  for (const row of store.list()) {
    // A name lock held: a pool is booting or deleting it right now.
    if (!isPoolName(row.name) || isLocked(pathsOf(row.name).nameLock) || isLive(reconcile(store, row))) continue;
    await withNameLock(row.name, async () => {
      const fresh = store.get(row.name);
      if (fresh && !isLive(reconcile(store, fresh))) await deleteState(store, row.name);
    }).catch(() => {});
  }
}

/**
 * A sandbox from the first pool of this process that matches `config`, or
 * undefined (no pool matches, or none has one ready): the caller boots cold.
 *
 * @example
 * ```ts
 * import { takePooled } from "./pool.ts";
 * import { parseConfig } from "./config.ts";
 * import { Sandbox } from "@krunbox/krunbox";
 * const cfg = parseConfig({ name: "job-1", image: { kind: "dir", path: "/srv/root" } });
 * console.log(await takePooled(cfg, false, Sandbox)); // undefined: no pool in this process
 * ```
 */
export async function takePooled(
  config: SandboxConfig,
  replace: boolean,
  sandbox: typeof Sandbox,
): Promise<Sandbox | undefined> {
  for (const pool of pools) {
    if (!pool.matches(config)) continue;
    const sb = await pool.take(config, replace, sandbox);
    if (sb) return sb;
  }
  return undefined;
}
