// Package policy decides: it classifies destination addresses into groups,
// matches flows against the first-match-wins rules, keeps the per-sandbox
// name→address table that domain rules match against, and makes the DNS
// decisions (which names may be forwarded, which answers are rebinding).
package policy

import (
	"net/netip"
)

// Group is a destination group (netd/PROTOCOL.md, "Decisions").
type Group string

// The groups. Reserved is never allowed by any rule.
const (
	Public    Group = "public"
	Private   Group = "private"
	Loopback  Group = "loopback"
	Host      Group = "host"
	LinkLocal Group = "link-local"
	Metadata  Group = "metadata"
	Multicast Group = "multicast"
	Reserved  Group = "reserved"
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

var (
	metadataAddrs = []netip.Addr{netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fd00:ec2::254")}
	reservedNets  = mustPrefixes("0.0.0.0/8", "240.0.0.0/4", "::/128")
	loopbackNets  = mustPrefixes("127.0.0.0/8", "::1/128")
	privateNets   = mustPrefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
	linkLocalNets = mustPrefixes("169.254.0.0/16", "fe80::/10")
	multicastNets = mustPrefixes("224.0.0.0/4", "ff00::/8")
	broadcast     = netip.MustParseAddr("255.255.255.255")
	// Prefixes that embed an IPv4 address: classified by what they embed.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
)

// Classifier assigns each address exactly one group. Host addresses (the
// host's own interface addresses, read at start, and hostAddress) come before
// every other group, so no rule for "public" or "private" reaches the host
// through one of its own addresses.
type Classifier struct {
	host map[netip.Addr]bool
	// guest subnet other than netd's own addresses: always reserved
	subnet netip.Prefix
	own    map[netip.Addr]bool
}

// NewClassifier makes a classifier. hostAddrs are the host's interface
// addresses (loopback ones are ignored: they are "loopback"); subnet is the
// guest's subnet, reserved except for own (netd's gateway, DNS and host
// addresses; hostAddress is in hostAddrs).
func NewClassifier(hostAddrs []netip.Addr, subnet netip.Prefix, own []netip.Addr) *Classifier {
	c := &Classifier{host: map[netip.Addr]bool{}, subnet: subnet, own: map[netip.Addr]bool{}}
	for _, a := range hostAddrs {
		a = a.Unmap().WithZone("")
		if a.IsLoopback() || a.IsUnspecified() {
			continue
		}
		c.host[a] = true
	}
	for _, a := range own {
		c.own[a.Unmap()] = true
	}
	return c
}

// Classify returns the group of an address.
func (c *Classifier) Classify(a netip.Addr) Group {
	a = a.WithZone("").Unmap()
	if a.Is6() && nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	if !a.IsValid() {
		return Reserved
	}
	if c != nil {
		if c.host[a] {
			return Host
		}
		if c.subnet.IsValid() && c.subnet.Contains(a) && !c.own[a] {
			return Reserved
		}
	}
	if a == broadcast {
		return Multicast
	}
	for _, m := range metadataAddrs {
		if a == m {
			return Metadata
		}
	}
	for _, group := range []struct {
		g    Group
		nets []netip.Prefix
	}{
		{Reserved, reservedNets}, {Loopback, loopbackNets}, {Private, privateNets},
		{LinkLocal, linkLocalNets}, {Multicast, multicastNets},
	} {
		for _, p := range group.nets {
			if p.Contains(a) {
				return group.g
			}
		}
	}
	return Public
}

// HostAddrs returns the addresses classified as host.
func (c *Classifier) HostAddrs() map[netip.Addr]bool { return c.host }

func (c *Classifier) inSubnet(a netip.Addr) bool {
	return c != nil && c.subnet.IsValid() && c.subnet.Contains(a)
}
