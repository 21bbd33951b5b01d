/**
 * Builds a one-file Go program as a static binary (`CGO_ENABLED=0`) for a
 * test or bench guest whose busybox root lacks the tool (a UDP echo server,
 * a connection prober), with the Go toolchain provisioning already needs
 * for netd. Standard library only: nothing is downloaded.
 *
 * @module
 */

import { join } from "node:path";

/** Where Go is looked for when `go` is not on PATH (as scripts/provision/netd.ts does). */
const GO_FALLBACK = "/usr/local/go/bin/go";

/**
 * Builds `source` (package main) and returns the binary's path in a new temp directory.
 *
 * @example
 * ```ts
 * import { buildGoProgram } from "./go_build.ts";
 * const bin = await buildGoProgram("hello", 'package main\nfunc main() { println("hi") }\n');
 * ```
 */
export async function buildGoProgram(name: string, source: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: `krunbox-go-${name}-` });
  await Deno.writeTextFile(join(dir, "go.mod"), `module ${name}\n\ngo 1.21\n`);
  await Deno.writeTextFile(join(dir, "main.go"), source);
  let go = "go";
  try {
    await new Deno.Command("go", { args: ["version"], stdout: "null" }).output();
  } catch {
    go = GO_FALLBACK;
  }
  const out = await new Deno.Command(go, {
    args: ["build", "-trimpath", "-o", name, "."],
    cwd: dir,
    env: { CGO_ENABLED: "0", GOTOOLCHAIN: "local", GOFLAGS: "-buildvcs=false" },
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`go build ${name}: ${new TextDecoder().decode(out.stderr)}`);
  return join(dir, name);
}

/** A UDP echo server: `udpecho <port>` answers each datagram with `echo:` and the datagram. */
export const UDP_ECHO_GO = `package main

import (
	"net"
	"os"
)

func main() {
	c, err := net.ListenPacket("udp4", ":"+os.Args[1])
	if err != nil {
		panic(err)
	}
	buf := make([]byte, 65536)
	for {
		n, a, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		c.WriteTo(append([]byte("echo:"), buf[:n]...), a)
	}
}
`;
