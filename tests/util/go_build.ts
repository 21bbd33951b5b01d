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

/**
 * A TCP prober for a guest (one JSON line out per run; busybox `nc`'s
 * half-close is unreliable):
 *
 * - `tcpprobe drain <ip:port> <bytes>`: writes `bytes` of {@link probePattern},
 *   checks nothing comes back for 300 ms (`early`), half-closes (CloseWrite),
 *   reads the answer to EOF (`answer`, `readErr` empty on a clean EOF).
 * - `tcpprobe reset <ip:port> <bytes>`: writes `bytes`, then closes with a
 *   reset (SO_LINGER 0): the control that a server tells a reset from EOF.
 * - `tcpprobe banner <ip:port> <text>`: reads to EOF (the server's half-close),
 *   then writes `text`, half-closes and reads to the end again.
 * - `tcpprobe flood <ip:port> <n> <release file>`: one connection first (an
 *   echo round trip), then `n` dials at once, each kept if it echoes; prints
 *   `{"phase":"holding",…}` and waits (60 s at most) for the release file;
 *   then echoes on the first and on every kept one, closes the kept ones,
 *   redials as many (the first with retries for 10 s while netd's table
 *   drains) and prints `{"phase":"done",…}`.
 */
export const TCP_PROBE_GO = `package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func out(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func fail(err error) {
	out(map[string]any{"error": err.Error()})
	os.Exit(1)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*7 + i/1024) & 0xff)
	}
	return b
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func drain(addr string, n int) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fail(err)
	}
	t := c.(*net.TCPConn)
	data := pattern(n)
	sum := sha256.Sum256(data)
	if _, err := t.Write(data); err != nil {
		fail(err)
	}
	// The server answers only after EOF: nothing may arrive before the half-close.
	_ = t.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	one := make([]byte, 1)
	k, rerr := t.Read(one)
	early := k > 0 || !errors.Is(rerr, os.ErrDeadlineExceeded)
	t0 := time.Now()
	if err := t.CloseWrite(); err != nil {
		fail(err)
	}
	_ = t.SetReadDeadline(time.Now().Add(15 * time.Second))
	answer, err := io.ReadAll(t)
	t.Close()
	out(map[string]any{"sent": n, "sha256": hex.EncodeToString(sum[:]), "early": early, "earlyErr": errText(rerr),
		"answer": string(answer), "readErr": errText(err), "answerMs": ms(time.Since(t0))})
}

func banner(addr, text string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fail(err)
	}
	t := c.(*net.TCPConn)
	_ = t.SetDeadline(time.Now().Add(15 * time.Second))
	got, rerr := io.ReadAll(t)
	_, werr := t.Write([]byte(text))
	cerr := t.CloseWrite()
	rest, ferr := io.ReadAll(t)
	t.Close()
	out(map[string]any{"banner": string(got), "readErr": errText(rerr), "writeErr": errText(werr),
		"closeWriteErr": errText(cerr), "rest": string(rest), "finalErr": errText(ferr)})
}

func reset(addr string, n int) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fail(err)
	}
	t := c.(*net.TCPConn)
	_, werr := t.Write(pattern(n))
	time.Sleep(200 * time.Millisecond)
	_ = t.SetLinger(0)
	t.Close()
	out(map[string]any{"reset": true, "writeErr": errText(werr)})
}

func echo(c net.Conn, text string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(text)); err != nil {
		return err
	}
	got := make([]byte, len(text))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, []byte(text)) {
		return fmt.Errorf("echoed %q", got)
	}
	return nil
}

func flood(addr string, n int, release string) {
	first, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fail(fmt.Errorf("the first connection: %w", err))
	}
	if err := echo(first, "first-before"); err != nil {
		fail(fmt.Errorf("the first connection before the flood: %w", err))
	}
	var mu sync.Mutex
	var held []net.Conn
	refused, others := 0, []string{}
	maxRefusedMs := 0.0
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := time.Now()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err == nil {
				err = echo(c, "held-"+strconv.Itoa(i))
				if err != nil {
					c.Close()
				}
			}
			d := ms(time.Since(s))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				held = append(held, c)
			case errors.Is(err, syscall.ECONNREFUSED):
				refused++
				if d > maxRefusedMs {
					maxRefusedMs = d
				}
			default:
				others = append(others, err.Error())
			}
		}(i)
	}
	wg.Wait()
	out(map[string]any{"phase": "holding", "held": len(held), "refused": refused, "others": others,
		"maxRefusedMs": maxRefusedMs, "floodMs": ms(time.Since(t0))})
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(release); err == nil {
			break
		}
	}
	firstAfter := errText(echo(first, "first-after"))
	heldAfter := 0
	for i, c := range held {
		if echo(c, "again-"+strconv.Itoa(i)) == nil {
			heldAfter++
		}
		c.Close()
	}
	t1 := time.Now()
	tries := 0
	var re []net.Conn
	var reErr error
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tries++
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			err = echo(c, "reopen")
		}
		if err == nil {
			re = append(re, c)
			break
		}
		reErr = err
		if time.Now().After(end) {
			break
		}
	}
	firstReopenMs := ms(time.Since(t1))
	if len(re) == 1 {
		for i := 1; i < len(held); i++ {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err == nil {
				err = echo(c, "reopen")
			}
			if err != nil {
				reErr = err
				break
			}
			re = append(re, c)
		}
	}
	for _, c := range re {
		c.Close()
	}
	firstLast := errText(echo(first, "first-last"))
	first.Close()
	out(map[string]any{"phase": "done", "firstAfter": firstAfter, "heldAfter": heldAfter, "reopened": len(re),
		"reopenTries": tries, "firstReopenMs": firstReopenMs, "reopenErr": errText(reErr), "firstLast": firstLast})
}

func main() {
	switch os.Args[1] {
	case "drain":
		n, _ := strconv.Atoi(os.Args[3])
		drain(os.Args[2], n)
	case "reset":
		n, _ := strconv.Atoi(os.Args[3])
		reset(os.Args[2], n)
	case "banner":
		banner(os.Args[2], os.Args[3])
	case "flood":
		n, _ := strconv.Atoi(os.Args[3])
		flood(os.Args[2], n, os.Args[4])
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}
`;

/** The bytes `tcpprobe drain` sends: byte i is (7i + ⌊i/1024⌋) mod 256. */
export function probePattern(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + Math.floor(i / 1024)) & 0xff;
  return b;
}
