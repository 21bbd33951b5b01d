// Package config parses and validates netd's configuration: the first line
// netd reads on stdin (netd/PROTOCOL.md, "Configuration"). Validation is
// strict: an unknown field, a wrong type or a value out of range is an error
// naming the field, and netd exits 2.
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Version is the only configuration version this netd speaks.
const Version = 1

// HostName is the name netd answers with hostAddress (the host's loopback).
// Only the host group reaches it: no rule may name it or a suffix above it,
// and dns.hosts may not redefine it.
const HostName = "host.krunbox.internal"

// CoversHostName says whether a suffix (".example.com") matches HostName.
func CoversHostName(suffix string) bool {
	return suffix[1:] == HostName || strings.HasSuffix(HostName, suffix)
}

// Config is the whole configuration line.
type Config struct {
	Version        int      `json:"version"`
	Socket         string   `json:"socket"`
	MTU            int      `json:"mtu"`
	Guest          Guest    `json:"guest"`
	Gateway        string   `json:"gateway"`
	DNSAddress     string   `json:"dnsAddress"`
	HostAddress    string   `json:"hostAddress"`
	Hostname       string   `json:"hostname"`
	Policy         Policy   `json:"policy"`
	DNS            DNS      `json:"dns"`
	Ports          []Port   `json:"ports"`
	MaxConnections int      `json:"maxConnections"`
	TrustCA        []string `json:"trustCa"`
	TLS            TLS      `json:"tls"`
	Secrets        []Secret `json:"secrets"`

	// Parsed forms, filled by Parse.
	GuestMAC     net.HardwareAddr      `json:"-"`
	GuestIP      netip.Addr            `json:"-"`
	Subnet       netip.Prefix          `json:"-"`
	GatewayIP    netip.Addr            `json:"-"`
	DNSIP        netip.Addr            `json:"-"`
	HostIP       netip.Addr            `json:"-"`
	DNSHosts     map[string]netip.Addr `json:"-"`
	DNSUpstreams []netip.AddrPort      `json:"-"`
}

// Guest is the guest's interface.
type Guest struct {
	MAC    string `json:"mac"`
	IP     string `json:"ip"`
	Prefix int    `json:"prefix"`
}

// Policy is the ordered rule list and the default action.
type Policy struct {
	Rules   []Rule `json:"rules"`
	Default string `json:"default"`
}

// Rule is one policy rule (first match wins).
type Rule struct {
	Action    string      `json:"action"`
	Direction string      `json:"direction"`
	Dest      Dest        `json:"dest"`
	Protocols []string    `json:"protocols"`
	Ports     []PortRange `json:"ports"`
	ID        string      `json:"id"`

	// Parsed form of a cidr destination.
	CIDR netip.Prefix `json:"-"`
}

// Dest is a rule's destination.
type Dest struct {
	Kind   string `json:"kind"`
	CIDR   string `json:"cidr,omitempty"`
	Name   string `json:"name,omitempty"`
	Suffix string `json:"suffix,omitempty"`
	Group  string `json:"group,omitempty"`
}

// PortRange is an inclusive port range.
type PortRange struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// DNS is what netd's resolver answers itself and whom it asks.
type DNS struct {
	Hosts    map[string]string `json:"hosts"`
	Upstream []string          `json:"upstream"`
}

// Port is one published port.
type Port struct {
	Protocol string `json:"protocol"`
	Bind     string `json:"bind"`
	Host     int    `json:"host"`
	Guest    int    `json:"guest"`

	BindIP netip.Addr `json:"-"`
}

// TLS is the interception setting (used only with secrets).
type TLS struct {
	Ports  []int    `json:"ports"`
	Bypass []string `json:"bypass"`
}

// Secret is one secret: its value is substituted for its placeholder only
// in intercepted TLS requests to its hosts (PROTOCOL.md).
type Secret struct {
	Env         string   `json:"env"`
	Placeholder string   `json:"placeholder"`
	Value       string   `json:"value"`
	Hosts       []string `json:"hosts"`
	Patterns    []string `json:"patterns"`
	InBody      bool     `json:"inBody"`
	InQuery     bool     `json:"inQuery"`
}

// Groups are the destination groups a rule may name.
var Groups = map[string]bool{
	"public": true, "private": true, "loopback": true, "host": true,
	"link-local": true, "metadata": true, "multicast": true,
}

// Protocols are the protocols a rule may name.
var Protocols = map[string]bool{"tcp": true, "udp": true, "icmp": true}

// Error is a configuration error; Field names the offending field.
type Error struct {
	Field   string
	Message string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "config: " + e.Message
	}
	return fmt.Sprintf("config: %s: %s", e.Field, e.Message)
}

func bad(field, format string, args ...any) *Error {
	return &Error{Field: field, Message: fmt.Sprintf(format, args...)}
}

// Parse decodes and validates one configuration line.
func Parse(line []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, decodeError(err)
	}
	if dec.More() {
		return nil, bad("", "trailing data after the configuration object")
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func decodeError(err error) error {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		return bad(e.Field, "wrong type: %s where %s was expected", e.Value, e.Type)
	case *json.SyntaxError:
		return bad("", "not JSON: %v (offset %d)", e, e.Offset)
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return bad(strings.Trim(rest, `"`), "unknown field")
	}
	return bad("", "%v", err)
}

func parseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, bad(field, "not an IP address: %q", s)
	}
	return a, nil
}

func (c *Config) validate() error {
	if c.Version != Version {
		return bad("version", "must be %d (got %d)", Version, c.Version)
	}
	if c.Socket == "" || !strings.HasPrefix(c.Socket, "/") {
		return bad("socket", "must be an absolute path")
	}
	if len(c.Socket) > 107 {
		return bad("socket", "path longer than 107 bytes (a unix socket limit)")
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.MTU < 576 || c.MTU > 65535 {
		return bad("mtu", "must be 576..65535 (got %d)", c.MTU)
	}
	var err error
	if c.GuestMAC, err = net.ParseMAC(c.Guest.MAC); err != nil || len(c.GuestMAC) != 6 {
		return bad("guest.mac", "not an Ethernet MAC address: %q", c.Guest.MAC)
	}
	if c.GuestMAC[0]&1 == 1 {
		return bad("guest.mac", "a multicast MAC address: %q", c.Guest.MAC)
	}
	if c.GuestIP, err = parseAddr("guest.ip", c.Guest.IP); err != nil {
		return err
	}
	if !c.GuestIP.Is4() {
		return bad("guest.ip", "must be an IPv4 address")
	}
	if c.Guest.Prefix < 8 || c.Guest.Prefix > 30 {
		return bad("guest.prefix", "must be 8..30 (got %d)", c.Guest.Prefix)
	}
	c.Subnet = netip.PrefixFrom(c.GuestIP, c.Guest.Prefix).Masked()
	inSubnet := func(field, s string) (netip.Addr, error) {
		a, err := parseAddr(field, s)
		if err != nil {
			return a, err
		}
		if !c.Subnet.Contains(a) || a == c.GuestIP || a == c.Subnet.Addr() {
			return a, bad(field, "must be an address of the guest's subnet %s other than the guest's", c.Subnet)
		}
		return a, nil
	}
	if c.GatewayIP, err = inSubnet("gateway", c.Gateway); err != nil {
		return err
	}
	if c.DNSIP, err = inSubnet("dnsAddress", c.DNSAddress); err != nil {
		return err
	}
	if c.HostIP, err = inSubnet("hostAddress", c.HostAddress); err != nil {
		return err
	}
	if c.HostIP == c.GatewayIP || c.HostIP == c.DNSIP {
		return bad("hostAddress", "must differ from gateway and dnsAddress")
	}
	if len(c.Hostname) > 253 {
		return bad("hostname", "longer than 253 bytes")
	}
	if err := c.validatePolicy(); err != nil {
		return err
	}
	if err := c.validateDNS(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i := range c.Ports {
		p := &c.Ports[i]
		f := fmt.Sprintf("ports[%d]", i)
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return bad(f+".protocol", `must be "tcp" or "udp" (got %q)`, p.Protocol)
		}
		if p.Bind == "" {
			p.Bind = "127.0.0.1"
		}
		if p.BindIP, err = parseAddr(f+".bind", p.Bind); err != nil {
			return err
		}
		if p.Host < 1 || p.Host > 65535 {
			return bad(f+".host", "must be 1..65535 (got %d)", p.Host)
		}
		if p.Guest < 1 || p.Guest > 65535 {
			return bad(f+".guest", "must be 1..65535 (got %d)", p.Guest)
		}
		key := fmt.Sprintf("%s/%s/%d", p.Protocol, p.BindIP, p.Host)
		if seen[key] {
			return bad(f, "publishes %s %s:%d twice", p.Protocol, p.Bind, p.Host)
		}
		seen[key] = true
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 256
	}
	if c.MaxConnections < 1 || c.MaxConnections > 65536 {
		return bad("maxConnections", "must be 1..65536 (got %d)", c.MaxConnections)
	}
	for i, pem := range c.TrustCA {
		if !strings.Contains(pem, "-----BEGIN CERTIFICATE-----") {
			return bad(fmt.Sprintf("trustCa[%d]", i), "not a PEM certificate")
		}
	}
	for i, p := range c.TLS.Ports {
		if p < 1 || p > 65535 {
			return bad(fmt.Sprintf("tls.ports[%d]", i), "must be 1..65535 (got %d)", p)
		}
	}
	return c.validateSecrets()
}

// MaxSecretValue bounds a secret's value (PROTOCOL.md: at most 16 KiB).
const MaxSecretValue = 16 << 10

// validateSecrets checks the secrets and the interception settings. Errors
// name the field, never a value.
func (c *Config) validateSecrets() error {
	if len(c.Secrets) > 0 && len(c.TLS.Ports) == 0 {
		c.TLS.Ports = []int{443}
	}
	for i, b := range c.TLS.Bypass {
		n, err := NormalizeName(b)
		if err != nil {
			return bad(fmt.Sprintf("tls.bypass[%d]", i), "%v", err)
		}
		c.TLS.Bypass[i] = n
	}
	envs, placeholders := map[string]bool{}, map[string]bool{}
	for i := range c.Secrets {
		s := &c.Secrets[i]
		f := fmt.Sprintf("secrets[%d]", i)
		if s.Env == "" || envs[s.Env] {
			return bad(f+".env", "empty or not unique")
		}
		envs[s.Env] = true
		if len(s.Placeholder) < 16 || strings.ContainsAny(s.Placeholder, "\x00\r\n") || placeholders[s.Placeholder] {
			return bad(f+".placeholder", "shorter than 16 bytes, with NUL/CR/LF, or not unique")
		}
		placeholders[s.Placeholder] = true
		if s.Value == "" || len(s.Value) > MaxSecretValue || strings.ContainsAny(s.Value, "\x00\r\n") {
			return bad(f+".value", "must be 1..%d bytes without NUL, CR or LF (not shown)", MaxSecretValue)
		}
		if strings.Contains(s.Value, s.Placeholder) {
			return bad(f+".value", "contains its own placeholder")
		}
		if len(s.Hosts)+len(s.Patterns) == 0 {
			return bad(f+".hosts", "a secret needs at least one host or pattern")
		}
		for j, h := range s.Hosts {
			n, err := NormalizeName(h)
			if err != nil {
				return bad(fmt.Sprintf("%s.hosts[%d]", f, j), "not a DNS name")
			}
			s.Hosts[j] = n
		}
		for j, p := range s.Patterns {
			rest, ok := strings.CutPrefix(p, "*.")
			n, err := NormalizeName(rest)
			if !ok || err != nil || !strings.Contains(n, ".") {
				return bad(fmt.Sprintf("%s.patterns[%d]", f, j), `must be "*.NAME" with at least two labels after the wildcard`)
			}
			s.Patterns[j] = "*." + n
		}
	}
	return nil
}

// Allows says whether the secret's value may be sent to host (a lower-case
// name): one of its hosts, or one more label under one of its patterns.
func (s *Secret) Allows(host string) bool {
	for _, h := range s.Hosts {
		if h == host {
			return true
		}
	}
	for _, p := range s.Patterns {
		label, rest, ok := strings.Cut(host, ".")
		if ok && label != "" && "*."+rest == p {
			return true
		}
	}
	return false
}

func (c *Config) validatePolicy() error {
	switch c.Policy.Default {
	case "allow", "deny":
	case "":
		c.Policy.Default = "deny"
	default:
		return bad("policy.default", `must be "allow" or "deny" (got %q)`, c.Policy.Default)
	}
	for i := range c.Policy.Rules {
		r := &c.Policy.Rules[i]
		f := fmt.Sprintf("policy.rules[%d]", i)
		if r.Action != "allow" && r.Action != "deny" {
			return bad(f+".action", `must be "allow" or "deny" (got %q)`, r.Action)
		}
		switch r.Direction {
		case "egress", "ingress":
		case "":
			r.Direction = "egress"
		default:
			return bad(f+".direction", `must be "egress" or "ingress" (got %q)`, r.Direction)
		}
		d := &r.Dest
		extra := func(allowed string) error {
			fields := map[string]string{"cidr": d.CIDR, "name": d.Name, "suffix": d.Suffix, "group": d.Group}
			for k, v := range fields {
				if v != "" && k != allowed {
					return bad(f+".dest."+k, "not allowed with kind %q", d.Kind)
				}
			}
			return nil
		}
		switch d.Kind {
		case "any":
			if err := extra(""); err != nil {
				return err
			}
		case "cidr":
			if err := extra("cidr"); err != nil {
				return err
			}
			if p, err := netip.ParsePrefix(d.CIDR); err == nil {
				r.CIDR = p.Masked()
			} else if a, err := netip.ParseAddr(d.CIDR); err == nil && a.Zone() == "" {
				r.CIDR = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			} else {
				return bad(f+".dest.cidr", "not an IP address or CIDR: %q", d.CIDR)
			}
			if r.CIDR.Addr().Is4In6() {
				return bad(f+".dest.cidr", "an IPv4-mapped IPv6 prefix: write the IPv4 form")
			}
		case "domain":
			if err := extra("name"); err != nil {
				return err
			}
			n, err := NormalizeName(d.Name)
			if err != nil {
				return bad(f+".dest.name", "%v", err)
			}
			d.Name = n
			if n == HostName {
				return bad(f+".dest.name", "%s is reachable only through the host group", HostName)
			}
		case "suffix":
			if err := extra("suffix"); err != nil {
				return err
			}
			if !strings.HasPrefix(d.Suffix, ".") {
				return bad(f+".dest.suffix", "must start with a dot (got %q)", d.Suffix)
			}
			n, err := NormalizeName(d.Suffix[1:])
			if err != nil {
				return bad(f+".dest.suffix", "%v", err)
			}
			d.Suffix = "." + n
			if CoversHostName(d.Suffix) {
				return bad(f+".dest.suffix", "%s covers %s, which only the host group reaches: name a narrower suffix", d.Suffix, HostName)
			}
		case "group":
			if err := extra("group"); err != nil {
				return err
			}
			if !Groups[d.Group] {
				return bad(f+".dest.group", "unknown group %q", d.Group)
			}
		default:
			return bad(f+".dest.kind", "unknown kind %q", d.Kind)
		}
		for j, p := range r.Protocols {
			if !Protocols[p] {
				return bad(fmt.Sprintf("%s.protocols[%d]", f, j), "unknown protocol %q", p)
			}
		}
		for j, p := range r.Ports {
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			if p.From < 1 || p.From > 65535 {
				return bad(pf+".from", "must be 1..65535 (got %d)", p.From)
			}
			if p.To < p.From || p.To > 65535 {
				return bad(pf+".to", "must be %d..65535 (got %d)", p.From, p.To)
			}
		}
	}
	return nil
}

func (c *Config) validateDNS() error {
	c.DNSHosts = map[string]netip.Addr{}
	for name, addr := range c.DNS.Hosts {
		f := fmt.Sprintf("dns.hosts[%q]", name)
		n, err := NormalizeName(name)
		if err != nil {
			return bad(f, "%v", err)
		}
		if n == HostName {
			return bad(f, "%s is the host's name and cannot be redefined", HostName)
		}
		a, err := parseAddr(f, addr)
		if err != nil {
			return err
		}
		c.DNSHosts[n] = a.Unmap()
	}
	for i, u := range c.DNS.Upstream {
		f := fmt.Sprintf("dns.upstream[%d]", i)
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			a, err2 := netip.ParseAddr(u)
			if err2 != nil || a.Zone() != "" {
				return bad(f, "not an address or address:port: %q", u)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		if ap.Port() == 0 {
			return bad(f, "port 0")
		}
		c.DNSUpstreams = append(c.DNSUpstreams, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return nil
}

// NormalizeName lower-cases a DNS name and strips one trailing dot; it
// refuses what is not a name.
func NormalizeName(s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(s, "."))
	if n == "" || len(n) > 253 {
		return "", fmt.Errorf("not a DNS name: %q", s)
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("not a DNS name: %q", s)
		}
		for _, ch := range label {
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "", fmt.Errorf("not a DNS name: %q", s)
			}
		}
	}
	return n, nil
}
