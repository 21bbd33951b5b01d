/**
 * The wire form of errors (src/errors.ts): every error class crosses a JSON
 * hop as itself, with its code, message and fields, and its cause's message;
 * malformed wire forms are a ProtocolError, never a wrong class.
 */

import { assert, assertEquals } from "../util/assert.ts";
import * as errors from "../../src/errors.ts";
import {
  AgentError,
  AgentTimeoutError,
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  errorFromWire,
  errorToWire,
  ExecAbortedError,
  ExecOutputLimitError,
  ExecSpawnError,
  ExecTimeoutError,
  FsError,
  ImageError,
  InvalidConfigError,
  KrunboxError,
  LibkrunError,
  NotFoundError,
  NotRunningError,
  ProtocolError,
  SecretUnavailableError,
  StateError,
  StillRunningError,
  VmCrashedError,
} from "../../src/errors.ts";

/** One instance of every class, with fields that differ from any default. */
const SAMPLES: readonly KrunboxError[] = [
  new KrunboxError("EXEC_SPAWN_FAILED", "stdin was not opened (pass stdin: true)"),
  new NotFoundError("image", "busybox:nope"),
  new AlreadyExistsError("sandbox", "job-1"),
  new StillRunningError("job-2"),
  new NotRunningError("job-3", "draining"),
  new InvalidConfigError("cpus", "must be an integer from 1 to 64, got 0"),
  new ImageError("IMAGE_DIGEST_MISMATCH", "sha256:aa… does not match"),
  new ExecTimeoutError("sleep", 1500),
  new ExecAbortedError("yes"),
  new ExecSpawnError("nope", "not_executable", "ENOEXEC"),
  new FsError("EACCES", "/root/secret"),
  new BackendUnavailableError("qemu", "qemu-system-x86_64: not found", "apt-get install qemu-system-x86"),
  new VmCrashedError("job-4", "Kernel panic - not syncing"),
  new BootTimeoutError("job-5", 300, "Unable to calibrate against PIT"),
  new ProtocolError("frame header of 5000000 bytes exceeds 1 MiB"),
  new AgentError(-32601, "method not found", { method: "x.y", nested: [1, null] }),
  new LibkrunError("krun_set_vm_config", -22),
  new StateError("state home /ro is not writable; set KRUNBOX_HOME"),
  new SecretUnavailableError("job-1", ["OPENAI_API_KEY", "HF_TOKEN"]),
  new ExecOutputLimitError("yes", "stdout", 64 << 20),
  new AgentTimeoutError("fs.read", 60_000),
];

const hop = (e: unknown) => errorFromWire(JSON.parse(JSON.stringify(errorToWire(e))));
/** Own enumerable properties: `code`, `name` and every field the class adds. */
const own = (e: Error) => Object.entries(e).sort(([a], [b]) => a.localeCompare(b));

Deno.test("every error class of src/errors.ts has a sample here", () => {
  const classes = Object.entries(errors)
    .filter(([, v]) => typeof v === "function" && (v === KrunboxError || v.prototype instanceof KrunboxError))
    .map(([k]) => k)
    .sort();
  assertEquals(SAMPLES.map((e) => e.constructor.name).sort(), classes);
});

Deno.test("every error class round-trips: same class, code, message and fields", () => {
  for (const sent of SAMPLES) {
    const got = hop(sent);
    assertEquals(Object.getPrototypeOf(got), Object.getPrototypeOf(sent), sent.name);
    assert(got instanceof sent.constructor, sent.name);
    assertEquals(got.code, sent.code);
    assertEquals(got.message, sent.message);
    assertEquals(own(got), own(sent), `${sent.name} fields`);
    assert(got.stack?.startsWith(`${sent.name}: ${sent.message.split("\n")[0]}`), got.stack);
  }
});

Deno.test("BackendUnavailableError keeps fix and missing; causes keep their class and message", () => {
  const cause = new LibkrunError("krun_start_enter", -19, { cause: new TypeError("inner") });
  const got = hop(new BackendUnavailableError("libkrun", "libkrunfw", "run `./dev setup`", { cause }));
  assert(got instanceof BackendUnavailableError);
  assertEquals([got.backend, got.missing, got.fix], ["libkrun", "libkrunfw", "run `./dev setup`"]);
  assert(got.cause instanceof LibkrunError);
  assertEquals([got.cause.call, got.cause.errnoNum, got.cause.message], ["krun_start_enter", -19, cause.message]);
  const inner = got.cause.cause as Error;
  assertEquals([inner.name, inner.message], ["TypeError", "inner"]);
  const plainCause = hop(new StateError("x", { cause: "a string cause" }));
  assertEquals((plainCause.cause as Error).message, "a string cause");
});

Deno.test("a subclass the table does not know travels as its nearest known class", () => {
  class GuestFsError extends FsError {}
  const got = hop(new GuestFsError("ENOSPC", "/data"));
  assertEquals(Object.getPrototypeOf(got), FsError.prototype);
  assertEquals([(got as FsError).errno, (got as FsError).path], ["ENOSPC", "/data"]);
});

Deno.test("an unknown class keeps its code; malformed wire forms are a ProtocolError", () => {
  const unknown = errorFromWire({ class: "FutureError", code: "STATE", message: "from a newer runner" });
  assertEquals([Object.getPrototypeOf(unknown), unknown.code, unknown.message], [
    KrunboxError.prototype,
    "STATE",
    "from a newer runner",
  ]);
  const bad: unknown[] = [
    null,
    "BACKEND_UNAVAILABLE",
    [],
    { class: "FsError", message: "no code" },
    { class: "FsError", code: "NO_SUCH_CODE", message: "x", fields: { errno: "E", path: "/" } },
    { class: "FsError", code: "FS", message: "x", fields: { errno: 2, path: "/" } },
    { class: "BackendUnavailableError", code: "BACKEND_UNAVAILABLE", message: "x", fields: { backend: "qemu" } },
    { class: "ImageError", code: "STATE", message: "x" },
    { class: "FsError", code: "STATE", message: "x", fields: { errno: "E", path: "/" } },
    {
      class: "ExecSpawnError",
      code: "EXEC_SPAWN_FAILED",
      message: "x",
      fields: { cmd: "a", kind: "evil", errno: "E" },
    },
    { class: "toString", code: "STATE", message: "x" },
  ];
  for (const w of bad) {
    const e = errorFromWire(w);
    if (w && typeof w === "object" && (w as { class?: string }).class === "toString") {
      // A name that is not a table key (even one on Object.prototype) is an unknown class.
      assertEquals(Object.getPrototypeOf(e), KrunboxError.prototype);
      continue;
    }
    assert(e instanceof ProtocolError, `${JSON.stringify(w)} gave ${e.name}`);
    assert(e.message.includes(JSON.stringify(w) ?? ""), e.message);
  }
  // Positive control: the same shapes, well-formed, rebuild their class.
  assert(
    errorFromWire({ class: "FsError", code: "FS", message: "x", fields: { errno: "E", path: "/" } }) instanceof FsError,
  );
});

Deno.test("the wire form is plain JSON, also for fields JSON cannot hold", () => {
  const wire = errorToWire(new AgentError(-1, "odd", { big: 1n } as unknown));
  assertEquals(JSON.parse(JSON.stringify(wire)), wire);
  assertEquals(errorToWire(new TypeError("t")), { class: "TypeError", message: "t" });
  assertEquals(errorToWire("thrown text"), { class: "Error", message: "thrown text" });
});
