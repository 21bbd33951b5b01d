// Package mitm holds what netd needs to terminate a guest's TLS: a CA made
// in memory for one sandbox (never written anywhere; only its certificate
// leaves the process, in the `ready` line) and short-lived leaf certificates
// it signs for the names the guest asks for, cached per name.
package mitm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"sync"
	"time"
)

const (
	// CAValidity is how long the sandbox's CA is valid (a netd lives as
	// long as one run of its sandbox).
	CAValidity = 30 * 24 * time.Hour
	// LeafValidity is how long a leaf certificate is valid; a cached leaf
	// is renewed when less than LeafRenew of it is left.
	LeafValidity = 24 * time.Hour
	// LeafRenew is the remaining validity under which a leaf is renewed.
	LeafRenew = time.Hour
	// backdate covers a guest clock a little behind the host's.
	backdate = time.Hour
	// maxLeaves bounds the cache: past it the cache starts again.
	maxLeaves = 4096
)

// CA is one sandbox's certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
	now  func() time.Time

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

// keyAndSerial is a new P-256 key and a random 127-bit serial number.
func keyAndSerial() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return key, sn, err
}

// NewCA makes a CA (ECDSA P-256) whose name carries label (the sandbox's
// hostname); now may be nil (time.Now).
func NewCA(label string, now func() time.Time) (*CA, error) {
	if now == nil {
		now = time.Now
	}
	key, sn, err := keyAndSerial()
	if err != nil {
		return nil, err
	}
	t := now()
	cn := "krunbox sandbox CA"
	if label != "" && len(label) < 40 {
		cn += " " + label
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"krunbox"}},
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return &CA{cert: cert, key: key, pem: p, now: now, leaves: map[string]*tls.Certificate{}}, nil
}

// PEM is the CA's certificate (what the guest trusts).
func (c *CA) PEM() string { return c.pem }

// Certificate is the CA's parsed certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Leaf returns a certificate for name (a DNS name, from the guest's SNI),
// from the cache while it has more than LeafRenew left.
func (c *CA) Leaf(name string) (*tls.Certificate, error) {
	now := c.now()
	c.mu.Lock()
	if l := c.leaves[name]; l != nil && l.Leaf.NotAfter.Sub(now) > LeafRenew {
		c.mu.Unlock()
		return l, nil
	}
	c.mu.Unlock()
	l, err := c.issue(name, now)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.leaves) >= maxLeaves {
		c.leaves = map[string]*tls.Certificate{}
	}
	c.leaves[name] = l
	c.mu.Unlock()
	return l, nil
}

func (c *CA) issue(name string, now time.Time) (*tls.Certificate, error) {
	key, sn, err := keyAndSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(LeafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("mitm: a leaf for %q: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Roots is the pool upstream certificates are verified against: the
// system's roots plus extra PEM certificates (trustCa).
func Roots(extra []string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for i, p := range extra {
		if !pool.AppendCertsFromPEM([]byte(p)) {
			return nil, fmt.Errorf("trustCa[%d]: no certificate could be parsed", i)
		}
	}
	return pool, nil
}
