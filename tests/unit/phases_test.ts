import { assertEquals } from "../util/assert.ts";
import { epochMs, PhaseClock } from "../../src/util/phases.ts";

Deno.test("phases are contiguous from the origin and add up to the last mark", () => {
  const clock = new PhaseClock(1000);
  assertEquals(Math.round(clock.mark("a", 1012.34) * 100), 1234);
  clock.mark("b", 1050);
  clock.mark("c", 1050);
  assertEquals(clock.phases, [
    { name: "a", startMs: 0, durationMs: 12.3 },
    { name: "b", startMs: 12.3, durationMs: 37.7 },
    { name: "c", startMs: 50, durationMs: 0 },
  ]);
  assertEquals(clock.totalMs, 50);
  assertEquals(clock.lastMs, 1050);
  assertEquals(clock.toString(), "a 12 ms, b 38 ms, c 0 ms; total 50 ms");
});

Deno.test("a mark before the previous one is moved up to it: no phase is negative", () => {
  const clock = new PhaseClock(0);
  clock.mark("a", 100);
  assertEquals(clock.mark("guest estimate", 90), 0);
  clock.mark("b", 130);
  assertEquals(clock.phases.map((p) => [p.startMs, p.durationMs]), [[0, 100], [100, 0], [100, 30]]);
});

Deno.test("adopt continues with another clock's phases at their absolute ends", () => {
  const runner = new PhaseClock(2000);
  runner.mark("runner.start", 2040);
  runner.mark("vmm.start", 2500);
  const caller = new PhaseClock(1900);
  caller.mark("host.prepare", 2000);
  caller.adopt(runner.phases, runner.originMs);
  caller.mark("host.connect", 2510);
  assertEquals(caller.phases.map((p) => p.name), ["host.prepare", "runner.start", "vmm.start", "host.connect"]);
  assertEquals(caller.phases.map((p) => p.durationMs), [100, 40, 460, 10]);
  assertEquals(caller.totalMs, 610);
});

Deno.test("rounded phases stay contiguous (boundaries are rounded, not durations)", () => {
  const clock = new PhaseClock(0);
  for (let i = 1; i <= 50; i++) clock.mark(`p${i}`, i * 1.04999);
  const phases = clock.phases;
  for (let i = 1; i < phases.length; i++) {
    assertEquals(
      Math.round((phases[i - 1].startMs + phases[i - 1].durationMs) * 10),
      Math.round(phases[i].startMs * 10),
    );
  }
  const sum = phases.reduce((s, p) => s + p.durationMs, 0);
  assertEquals(Math.abs(sum - clock.totalMs) < 0.1, true);
  assertEquals(Object.isFrozen(phases) && Object.isFrozen(phases[0]), true);
});

Deno.test("the default origin is now on the host's wall clock", () => {
  const before = Date.now();
  const clock = new PhaseClock();
  assertEquals(clock.originMs >= before - 1 && clock.originMs <= epochMs(), true);
});
