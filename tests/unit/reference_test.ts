import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { ImageError } from "../../src/errors.ts";
import { checkDigest, isInsecureRegistry, parseReference } from "../../src/image/reference.ts";

const H64 = "0123456789abcdef".repeat(4);
const H128 = H64 + H64;

interface Valid {
  input: string;
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  canonical: string;
  apiHost?: string;
}

const valid: Valid[] = [
  // Docker Hub shorthands
  {
    input: "alpine",
    registry: "docker.io",
    repository: "library/alpine",
    tag: "latest",
    canonical: "docker.io/library/alpine:latest",
    apiHost: "registry-1.docker.io",
  },
  {
    input: "alpine:3.20",
    registry: "docker.io",
    repository: "library/alpine",
    tag: "3.20",
    canonical: "docker.io/library/alpine:3.20",
  },
  {
    input: "library/alpine",
    registry: "docker.io",
    repository: "library/alpine",
    tag: "latest",
    canonical: "docker.io/library/alpine:latest",
  },
  {
    input: "bitnami/redis:7.2",
    registry: "docker.io",
    repository: "bitnami/redis",
    tag: "7.2",
    canonical: "docker.io/bitnami/redis:7.2",
  },
  {
    input: "docker.io/alpine",
    registry: "docker.io",
    repository: "library/alpine",
    tag: "latest",
    canonical: "docker.io/library/alpine:latest",
  },
  {
    input: "index.docker.io/library/ubuntu:24.04",
    registry: "docker.io",
    repository: "library/ubuntu",
    tag: "24.04",
    canonical: "docker.io/library/ubuntu:24.04",
  },
  {
    input: "registry-1.docker.io/ubuntu",
    registry: "docker.io",
    repository: "library/ubuntu",
    tag: "latest",
    canonical: "docker.io/library/ubuntu:latest",
  },
  // a dotless, colonless first component is a path, not a registry
  {
    input: "myorg/sub/app",
    registry: "docker.io",
    repository: "myorg/sub/app",
    tag: "latest",
    canonical: "docker.io/myorg/sub/app:latest",
  },
  // a single component with a dot is still a Docker Hub image
  {
    input: "foo.bar",
    registry: "docker.io",
    repository: "library/foo.bar",
    tag: "latest",
    canonical: "docker.io/library/foo.bar:latest",
  },
  // "localhost:5000" alone is image localhost with tag 5000 (as docker reads it)
  {
    input: "localhost:5000",
    registry: "docker.io",
    repository: "library/localhost",
    tag: "5000",
    canonical: "docker.io/library/localhost:5000",
  },
  // registries
  {
    input: "ghcr.io/owner/repo:v1",
    registry: "ghcr.io",
    repository: "owner/repo",
    tag: "v1",
    canonical: "ghcr.io/owner/repo:v1",
    apiHost: "ghcr.io",
  },
  {
    input: "quay.io/a/b/c/d",
    registry: "quay.io",
    repository: "a/b/c/d",
    tag: "latest",
    canonical: "quay.io/a/b/c/d:latest",
  },
  {
    input: "registry.example.com:5000/team/app:1.0.0-rc.1",
    registry: "registry.example.com:5000",
    repository: "team/app",
    tag: "1.0.0-rc.1",
    canonical: "registry.example.com:5000/team/app:1.0.0-rc.1",
    apiHost: "registry.example.com:5000",
  },
  {
    input: "Registry.Example.COM/app",
    registry: "registry.example.com",
    repository: "app",
    tag: "latest",
    canonical: "registry.example.com/app:latest",
  },
  {
    input: "localhost/app",
    registry: "localhost",
    repository: "app",
    tag: "latest",
    canonical: "localhost/app:latest",
  },
  {
    input: "localhost:5000/app:dev",
    registry: "localhost:5000",
    repository: "app",
    tag: "dev",
    canonical: "localhost:5000/app:dev",
  },
  {
    input: "127.0.0.1:5000/ns/app",
    registry: "127.0.0.1:5000",
    repository: "ns/app",
    tag: "latest",
    canonical: "127.0.0.1:5000/ns/app:latest",
  },
  {
    input: "myhost:5000/app",
    registry: "myhost:5000",
    repository: "app",
    tag: "latest",
    canonical: "myhost:5000/app:latest",
  },
  {
    input: "[::1]:5000/app:x",
    registry: "[::1]:5000",
    repository: "app",
    tag: "x",
    canonical: "[::1]:5000/app:x",
  },
  {
    input: "[2001:db8::1]/app",
    registry: "[2001:db8::1]",
    repository: "app",
    tag: "latest",
    canonical: "[2001:db8::1]/app:latest",
  },
  // digests
  {
    input: `alpine@sha256:${H64}`,
    registry: "docker.io",
    repository: "library/alpine",
    digest: `sha256:${H64}`,
    canonical: `docker.io/library/alpine@sha256:${H64}`,
  },
  {
    input: `alpine:3.20@sha256:${H64}`,
    registry: "docker.io",
    repository: "library/alpine",
    tag: "3.20",
    digest: `sha256:${H64}`,
    canonical: `docker.io/library/alpine:3.20@sha256:${H64}`,
  },
  {
    input: `localhost:5000/app@sha256:${H64}`,
    registry: "localhost:5000",
    repository: "app",
    digest: `sha256:${H64}`,
    canonical: `localhost:5000/app@sha256:${H64}`,
  },
  {
    input: `127.0.0.1:5000/a/b:t@sha512:${H128}`,
    registry: "127.0.0.1:5000",
    repository: "a/b",
    tag: "t",
    digest: `sha512:${H128}`,
    canonical: `127.0.0.1:5000/a/b:t@sha512:${H128}`,
  },
  // separators and tag characters
  {
    input: "a/b.c_d__e---f:T_a.g-1",
    registry: "docker.io",
    repository: "a/b.c_d__e---f",
    tag: "T_a.g-1",
    canonical: "docker.io/a/b.c_d__e---f:T_a.g-1",
  },
  {
    input: `x/y:_${"a".repeat(127)}`,
    registry: "docker.io",
    repository: "x/y",
    tag: `_${"a".repeat(127)}`,
    canonical: `docker.io/x/y:_${"a".repeat(127)}`,
  },
  {
    input: "0/1:0",
    registry: "docker.io",
    repository: "0/1",
    tag: "0",
    canonical: "docker.io/0/1:0",
  },
];

Deno.test("parseReference: valid references normalize as docker does", async (t) => {
  for (const v of valid) {
    await t.step(v.input.length > 60 ? v.input.slice(0, 60) + "…" : v.input, () => {
      const ref = parseReference(v.input);
      assertEquals(
        { registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: ref.digest },
        { registry: v.registry, repository: v.repository, tag: v.tag, digest: v.digest },
      );
      assertEquals(ref.toString(), v.canonical);
      assertEquals(`${ref}`, v.canonical);
      if (v.apiHost) assertEquals(ref.apiHost, v.apiHost);
      assertEquals(ref.name, `${v.registry}/${v.repository}`);
      assertEquals(ref.manifestReference, v.digest ?? v.tag);
      // the canonical form parses back to the same reference
      assertEquals(parseReference(v.canonical).toString(), v.canonical);
    });
  }
});

interface Invalid {
  input: string;
  says: string;
}

const invalid: Invalid[] = [
  { input: "", says: "empty" },
  { input: "   ", says: "empty" },
  { input: " alpine", says: "whitespace" },
  { input: "alp ine", says: "whitespace" },
  { input: "alpine\n", says: "whitespace" },
  { input: "Alpine", says: 'path component "Alpine" must be lowercase' },
  { input: "docker.io/Library/alpine", says: "must be lowercase" },
  { input: "ghcr.io/Owner/repo:v1", says: "must be lowercase" },
  { input: "alpine:", says: 'tag after ":" is empty' },
  { input: "localhost:5000/app:", says: 'tag after ":" is empty' },
  { input: "alpine@", says: 'digest after "@" is empty' },
  { input: "alpine@sha256:abc", says: "exactly 64 lowercase hex characters, got 3" },
  { input: `alpine@sha256:${H64.toUpperCase()}`, says: "uppercase" },
  { input: `alpine@sha256:${H64.slice(1)}z`, says: "non-hex" },
  { input: `alpine@md5:${H64}`, says: 'unsupported digest algorithm "md5"' },
  { input: `alpine@${H64}`, says: "<algorithm>:<hex>" },
  { input: `alpine@sha256:${H64}@sha256:${H64}`, says: 'more than one "@"' },
  { input: "foo/../bar", says: '".." is not a valid repository path component' },
  { input: "../etc/passwd", says: '".."' },
  { input: "foo/./bar", says: '"."' },
  { input: "foo//bar", says: "empty component" },
  { input: "foo/", says: "empty component" },
  { input: "/foo", says: "empty component" },
  { input: "ghcr.io/", says: "empty component" },
  { input: ":tag", says: "repository name is empty" },
  { input: `@sha256:${H64}`, says: "repository name is empty" },
  { input: "-foo", says: 'path component "-foo" is invalid: use lowercase' },
  { input: "foo-", says: 'path component "foo-" is invalid: use lowercase' },
  { input: "foo_-bar", says: 'path component "foo_-bar" is invalid: use lowercase' },
  { input: "foo___bar", says: 'path component "foo___bar" is invalid: use lowercase' },
  { input: "foo..bar", says: 'path component "foo..bar" is invalid: use lowercase' },
  { input: "foo:bar:baz", says: 'path component "foo:bar" is invalid' },
  { input: "alpine:.tag", says: 'tag ".tag" is invalid' },
  { input: "alpine:-tag", says: 'tag "-tag" is invalid' },
  { input: "alpine:ta+g", says: 'tag "ta+g" is invalid' },
  { input: `alpine:${"a".repeat(129)}`, says: "the limit is 128" },
  { input: `a/${"b".repeat(254)}`, says: "the limit is 255" },
  { input: "https://ghcr.io/owner/repo", says: "URL scheme" },
  { input: "localhost:abc/app", says: 'port "abc" is not a number' },
  { input: "localhost:0/app", says: "outside 1-65535" },
  { input: "localhost:70000/app", says: "outside 1-65535" },
  { input: "-bad.example.com/app", says: "not a valid host name" },
  { input: "bad_host.example.com/app", says: "not a valid host name" },
  { input: "a..b.com/app", says: "not a valid host name" },
  { input: "::1:5000/app", says: "more than one" },
  { input: "[::1/app", says: "unclosed" },
  { input: "[zz::1]:5000/app", says: "IPv6" },
  { input: "[::1]x/app", says: "after the IPv6 address" },
];

Deno.test("parseReference: invalid references throw IMAGE_INVALID saying what is wrong", async (t) => {
  for (const v of invalid) {
    await t.step(JSON.stringify(v.input.length > 60 ? v.input.slice(0, 60) + "…" : v.input), () => {
      const e = assertThrows(() => parseReference(v.input), ImageError);
      assertEquals(e.code, "IMAGE_INVALID");
      assert(e.message.includes(v.says), `message ${JSON.stringify(e.message)} should say ${JSON.stringify(v.says)}`);
      assert(e.message.startsWith("invalid image reference"), e.message);
    });
  }
});

Deno.test("parseReference: references are immutable, withDigest pins one", () => {
  const ref = parseReference("localhost:5000/app:v1");
  assert(Object.isFrozen(ref));
  const pinned = ref.withDigest(`sha256:${H64}`);
  assertEquals(pinned.toString(), `localhost:5000/app:v1@sha256:${H64}`);
  assertEquals(pinned.manifestReference, `sha256:${H64}`);
  assertEquals(ref.digest, undefined);
  assertEquals(assertThrows(() => ref.withDigest("sha256:nope"), ImageError).code, "IMAGE_INVALID");
});

Deno.test("checkDigest returns the algorithm or throws IMAGE_INVALID", () => {
  assertEquals(checkDigest(`sha256:${H64}`), "sha256");
  assertEquals(checkDigest(`sha512:${H128}`), "sha512");
  for (const bad of ["", "sha256", `sha256:${H128}`, `sha512:${H64}`, `sha256:${H64}\n`, `SHA256:${H64}`]) {
    const e = assertThrows(() => checkDigest(bad, "layer digest"), ImageError);
    assertEquals(e.code, "IMAGE_INVALID");
    assert(e.message.startsWith("invalid layer digest"), e.message);
  }
});

Deno.test("isInsecureRegistry: loopback only, with any port", () => {
  const yes = [
    "localhost",
    "localhost:5000",
    "LOCALHOST:1",
    "127.0.0.1",
    "127.0.0.1:5000",
    "127.1.2.3:80",
    "127.255.255.255",
    "[::1]",
    "[::1]:5000",
    "::1",
  ];
  const no = [
    "docker.io",
    "ghcr.io",
    "registry.local:5000",
    "128.0.0.1",
    "127.0.0.256",
    "127.0.0",
    "10.0.0.1:5000",
    "localhost.example.com",
    "127.0.0.1.nip.io",
    "[::2]:5000",
    "[::1",
  ];
  for (const r of yes) assert(isInsecureRegistry(r), `${r} should be insecure (loopback)`);
  for (const r of no) assert(!isInsecureRegistry(r), `${r} should not be insecure`);
});
