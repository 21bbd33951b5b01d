/**
 * The setup command every "Fix:" names (src/setup_command.ts) exists where
 * krunbox runs: `dev setup` in a checkout, the package's own
 * `src/host/setup.ts` in a copy of the published files, the `setup` entry
 * point of the JSR package. tests/e2e/package_test.ts runs the one it names
 * from a copy of the package.
 */

import { join } from "node:path";
import { assertEquals } from "../util/assert.ts";
import { doctorCommand, setupCommand } from "../../src/setup_command.ts";
import { VERSION } from "../../src/version.ts";

Deno.test("setupCommand: a checkout's dev script, a package copy's setup.ts, JSR's entry point", async () => {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-setup-cmd-" });
  try {
    const root = new URL(`file://${dir}/`);
    assertEquals(setupCommand(root), `\`deno run -A ${dir}/src/host/setup.ts\``);
    assertEquals(doctorCommand(root), `\`deno run -A ${dir}/src/host/doctor.ts\``);
    await Deno.writeTextFile(join(dir, "dev"), "#!/bin/sh\n");
    assertEquals(setupCommand(root), `\`${dir}/dev setup\``);
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      assertEquals([setupCommand(root), doctorCommand(root)], ["`./dev setup`", "`./dev doctor`"]);
    } finally {
      Deno.chdir(cwd);
    }
    assertEquals(
      setupCommand(new URL(`https://jsr.io/@krunbox/krunbox/${VERSION}/`)),
      `\`deno run -A jsr:@krunbox/krunbox@${VERSION}/setup\``,
    );
    assertEquals(
      setupCommand(new URL("https://example.test/krunbox/")),
      "`deno run -A https://example.test/krunbox/src/host/setup.ts`",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
