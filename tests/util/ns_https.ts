/**
 * HTTPS servers in a network namespace of their own: a small Go program
 * (standard library only, built with ./go_build.ts) that makes its own test
 * CA in memory, serves one name per address with a leaf of that CA (and
 * plain HTTP on port 80 of the same address, recording each connection's raw
 * bytes too), and prints, as JSON lines on stdout, `{"ready":true,"ca":PEM}` once it listens
 * and then one record per request it receives: the server name, the Host,
 * the SNI, the request target and every header. The test reads what the
 * host side received, never the guest's word.
 *
 * Addresses: the part of tests/util/netns.ts's 203.0.113.200/29 that
 * TestInternet leaves unused — {@link HTTPS_A} and {@link HTTPS_B} in the
 * namespace, {@link HTTPS_HOST_SIDE} on the host end of the veth — each
 * routed as a /32, so a TestInternet of another test process (its /29
 * route) does not take their traffic, nor this namespace its.
 *
 * @module
 */

import { buildGoProgram } from "./go_build.ts";

/** The first server address (public to netd's classifier, never a real network). */
export const HTTPS_A = "203.0.113.204";
/** The second server address. */
export const HTTPS_B = "203.0.113.206";
/** The host end of the veth pair. */
export const HTTPS_HOST_SIDE = "203.0.113.205";

async function ip(...args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
}

const SOURCE = `package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

var mu sync.Mutex
var out = json.NewEncoder(os.Stdout)

func emit(v any) {
	mu.Lock()
	defer mu.Unlock()
	_ = out.Encode(v)
}

type rawListener struct {
	net.Listener
	server string
}

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &rawConn{Conn: c, server: l.server}, nil
}

type rawConn struct {
	net.Conn
	server string
	mu     sync.Mutex
	got    []byte
	once   sync.Once
}

func (c *rawConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got = append(c.got, p[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *rawConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		emit(map[string]any{"server": c.server, "port": 80, "raw": string(c.got)})
	})
	return c.Conn.Close()
}

func main() {
	var listen map[string]string
	if err := json.Unmarshal([]byte(os.Args[1]), &listen); err != nil {
		panic(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "krunbox e2e test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	serial := int64(2)
	for addr, name := range listen {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		serial++
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
		ln, err := tls.Listen("tcp", addr, cfg)
		if err != nil {
			panic(err)
		}
		server := name
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sni := ""
			if r.TLS != nil {
				sni = r.TLS.ServerName
			}
			emit(map[string]any{"server": server, "host": r.Host, "sni": sni, "target": r.RequestURI, "headers": r.Header})
			w.Write([]byte("hello from " + server + "\\n"))
		})
		go http.Serve(ln, handler)
		// Plain HTTP on port 80 of the same address; every connection's raw
		// bytes are a record of their own when it closes.
		host, _, _ := net.SplitHostPort(addr)
		plain, err := net.Listen("tcp", net.JoinHostPort(host, "80"))
		if err != nil {
			panic(err)
		}
		go http.Serve(rawListener{plain, server}, handler)
	}
	emit(map[string]any{"ready": true, "ca": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))})
	select {}
}
`;

/**
 * One request a server received (HTTPS on 443, or plain HTTP on 80 with `sni` ""), or, with `raw`, every byte one
 * plain port-80 connection received (recorded when it closes; no other field but `server` and `port`).
 */
export interface HttpsRecord {
  readonly server: string;
  readonly host: string;
  readonly sni: string;
  readonly target: string;
  readonly headers: Record<string, string[]>;
  readonly port?: 80;
  readonly raw?: string;
}

/**
 * The HTTPS servers and their namespace (root needed).
 *
 * @example
 * ```ts ignore
 * import { HTTPS_A, NsHttps } from "./ns_https.ts";
 * await using https = await NsHttps.start({ "api.test": HTTPS_A });
 * console.log(https.ca, https.records());
 * ```
 */
export class NsHttps implements AsyncDisposable {
  readonly #records: HttpsRecord[];

  private constructor(
    readonly child: Deno.ChildProcess,
    /** The test CA's certificate (what a sandbox passes as `trustCa`). */
    readonly ca: string,
    records: HttpsRecord[],
    readonly ns: string,
    readonly vethHost: string,
  ) {
    this.#records = records;
  }

  /** Makes the namespace, builds the server, starts it there (name → address, port 443), waits until it listens. */
  static async start(names: Record<string, string>): Promise<NsHttps> {
    const bin = await buildGoProgram("nshttps", SOURCE);
    const tag = `kbt${Deno.pid % 100000}`;
    const [ns, vethHost, vethNs] = [`${tag}-tls`, `${tag}h`, `${tag}n`];
    const addrs = Object.values(names);
    const teardown = async () => {
      await ip("link", "del", vethHost).catch(() => {}); // its routes go with it
      await ip("netns", "del", ns).catch(() => {});
    };
    await ip("netns", "add", ns);
    try {
      await ip("link", "add", vethHost, "type", "veth", "peer", "name", vethNs);
      await ip("link", "set", vethNs, "netns", ns);
      await ip("addr", "add", `${HTTPS_HOST_SIDE}/32`, "dev", vethHost);
      await ip("link", "set", vethHost, "up");
      for (const a of addrs) await ip("-n", ns, "addr", "add", `${a}/32`, "dev", vethNs);
      await ip("-n", ns, "link", "set", vethNs, "up");
      await ip("-n", ns, "link", "set", "lo", "up");
      await ip("-n", ns, "route", "add", `${HTTPS_HOST_SIDE}/32`, "dev", vethNs);
      for (const a of addrs) await ip("route", "add", `${a}/32`, "dev", vethHost, "src", HTTPS_HOST_SIDE);
    } catch (e) {
      await teardown();
      throw e;
    }
    const listen = Object.fromEntries(Object.entries(names).map(([name, a]) => [`${a}:443`, name]));
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, bin, JSON.stringify(listen)],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    const records: HttpsRecord[] = [];
    const ready = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the HTTPS server did not start in 20 s")), 20_000);
      (async () => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return reject(new Error("the HTTPS server exited"));
          buf += value;
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = JSON.parse(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
            if (line.ready) {
              clearTimeout(timer);
              resolve(line.ca);
            } else records.push(line as HttpsRecord);
          }
        }
      })().catch(reject);
    });
    try {
      return new NsHttps(child, await ready, records, ns, vethHost);
    } catch (e) {
      child.kill("SIGKILL");
      await child.status;
      await teardown();
      throw e;
    }
  }

  /** Every request received so far, in order. */
  records(): readonly HttpsRecord[] {
    return [...this.#records];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // gone
    }
    await this.child.status;
    await ip("link", "del", this.vethHost).catch(() => {});
    await ip("netns", "del", this.ns).catch(() => {});
  }
}
