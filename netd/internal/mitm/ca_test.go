package mitm

import (
	"crypto/x509"
	"testing"
	"time"
)

// A leaf chains to its CA for its name only, is short-lived, is cached per
// name, and is renewed once less than LeafRenew of it is left.
func TestLeavesChainCacheAndRenew(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("t", func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Certificate().IsCA || ca.Certificate().NotAfter.Sub(now) < CAValidity-time.Second {
		t.Fatalf("CA: IsCA %v, validity %v", ca.Certificate().IsCA, ca.Certificate().NotAfter.Sub(now))
	}
	l1, err := ca.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	opts := x509.VerifyOptions{Roots: roots, DNSName: "api.example.com", CurrentTime: now}
	if _, err := l1.Leaf.Verify(opts); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	opts.DNSName = "other.example.com"
	if _, err := l1.Leaf.Verify(opts); err == nil {
		t.Fatal("the leaf verified for another name")
	}
	if got := l1.Leaf.NotAfter.Sub(now); got < LeafValidity-time.Second || got > LeafValidity {
		t.Fatalf("leaf validity %v", got)
	}
	if l2, _ := ca.Leaf("api.example.com"); l2 != l1 {
		t.Fatal("a second leaf for the same name, not the cached one")
	}
	now = now.Add(LeafValidity - LeafRenew + time.Minute)
	if l3, _ := ca.Leaf("api.example.com"); l3 == l1 {
		t.Fatal("a leaf close to expiry was not renewed")
	}
	other, _ := NewCA("t", nil)
	if other.PEM() == ca.PEM() {
		t.Fatal("two CAs alike")
	}
}
