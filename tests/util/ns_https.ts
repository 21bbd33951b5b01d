/**
 * An HTTPS server for the test "internet" (tests/util/netns.ts): a small Go
 * program (standard library only, built with ./go_build.ts) run inside the
 * namespace that makes its own test CA in memory, serves one name per
 * address (`203.0.113.202:443` → `api.test`, …) with a leaf of that CA, and
 * prints, as JSON lines on stdout, `{"ready":true,"ca":PEM}` once it listens
 * and then one record per request it receives: the server name, the Host,
 * the SNI, the request target and every header. The test reads what the
 * host side received, never the guest's word.
 *
 * @module
 */

import { buildGoProgram } from "./go_build.ts";

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
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			emit(map[string]any{"server": server, "host": r.Host, "sni": r.TLS.ServerName, "target": r.RequestURI, "headers": r.Header})
			w.Write([]byte("hello from " + server + "\\n"))
		}))
	}
	emit(map[string]any{"ready": true, "ca": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))})
	select {}
}
`;

/** One request an HTTPS server received. */
export interface HttpsRecord {
  readonly server: string;
  readonly host: string;
  readonly sni: string;
  readonly target: string;
  readonly headers: Record<string, string[]>;
}

/**
 * The HTTPS servers, running in namespace `ns`.
 *
 * @example
 * ```ts ignore
 * import { NsHttps } from "./ns_https.ts";
 * await using https = await NsHttps.start(inet.ns, { "203.0.113.202:443": "api.test" });
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
  ) {
    this.#records = records;
  }

  /** Builds the server, starts it in `ns` and waits until it listens. */
  static async start(ns: string, listen: Record<string, string>): Promise<NsHttps> {
    const bin = await buildGoProgram("nshttps", SOURCE);
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
      return new NsHttps(child, await ready, records);
    } catch (e) {
      child.kill("SIGKILL");
      await child.status;
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
  }
}
