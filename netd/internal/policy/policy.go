package policy

import (
	"net/netip"
	"strings"

	"krunbox.dev/netd/internal/config"
)

// Direction of a flow: egress (the guest dials out) or ingress (a client
// dials a published port).
const (
	Egress  = "egress"
	Ingress = "ingress"
)

// Reasons, as events carry them.
const (
	ReasonRule      = "rule"
	ReasonDefault   = "default"
	ReasonDNS       = "dns"
	ReasonRebinding = "rebinding"
	ReasonLimit     = "limit"
)

// RuleReserved is the rule id of the engine's own, unconditional denial of
// reserved addresses (0/8, 240/4, the guest subnet other than netd's own
// addresses).
const RuleReserved = "netd:reserved"

// Flow is what a decision is made about.
type Flow struct {
	Direction string
	Protocol  string // "tcp" | "udp" | "icmp"
	Addr      netip.Addr
	Port      int // 0 for icmp
	Names     []string
}

// Decision is the outcome for one flow.
type Decision struct {
	Allow  bool
	Rule   string // the rule's id, "" when the default applied
	Reason string
	Group  Group
}

// Policy is a compiled rule list with its classifier.
type Policy struct {
	rules        []config.Rule
	defaultAllow bool
	classifier   *Classifier
	// hosts are the configured fixed answers (dns.hosts): the only bindings
	// through which a name rule reaches a non-public address.
	hosts map[string]netip.Addr
}

// New compiles the configured policy; hosts are the configuration's fixed
// DNS answers (dns.hosts, may be nil).
func New(p config.Policy, hosts map[string]netip.Addr, c *Classifier) *Policy {
	return &Policy{rules: p.Rules, defaultAllow: p.Default == "allow", classifier: c, hosts: hosts}
}

// Classifier returns the policy's classifier.
func (p *Policy) Classifier() *Classifier { return p.classifier }

// Classify returns the group of an address.
func (p *Policy) Classify(a netip.Addr) Group { return p.classifier.Classify(a) }

func nameMatches(d config.Dest, name string) bool {
	switch d.Kind {
	case "domain":
		return name == d.Name
	case "suffix":
		return name == d.Suffix[1:] || strings.HasSuffix(name, d.Suffix)
	}
	return false
}

func (p *Policy) destMatches(r *config.Rule, a netip.Addr, g Group, names []string) bool {
	switch r.Dest.Kind {
	case "any":
		return true
	case "cidr":
		// The guest subnet holds only netd's virtual addresses (hostAddress
		// is the host's loopback, not a LAN address) and reserved ones: CIDR
		// rules are about real networks and never match them.
		// Nor does an allow CIDR reach the host's own addresses: only the
		// host group (or any) does, so allow@192.168.0.0/16 is the LAN, not
		// the host's 192.168.1.5 (a deny CIDR still matches them).
		return r.CIDR.Contains(a) && !p.classifier.inSubnet(a) && (r.Action != "allow" || g != Host)
	case "group":
		return string(g) == r.Dest.Group
	case "domain", "suffix":
		for _, n := range names {
			if nameMatches(r.Dest, n) && (r.Action != "allow" || p.nameGrants(n, a, g)) {
				return true
			}
		}
	}
	return false
}

// nameGrants says whether an allow rule for a name may admit a flow to a
// that the sandbox resolved from that name: a public address always; any
// other (host, private, loopback, link-local, metadata, multicast) only
// through a dns.hosts binding (the configuration's own answer), never
// through one an upstream (or netd's host.krunbox.internal) gave. Such an
// address is reached only by a rule for it (its group, a CIDR, any), with
// that rule's protocols and ports.
func (p *Policy) nameGrants(name string, a netip.Addr, g Group) bool {
	if g == Public {
		return true
	}
	h, ok := p.hosts[name]
	return ok && h.Unmap() == a
}

func protoMatches(r *config.Rule, proto string) bool {
	if len(r.Protocols) == 0 {
		return true
	}
	for _, p := range r.Protocols {
		if p == proto {
			return true
		}
	}
	return false
}

func portMatches(r *config.Rule, proto string, port int) bool {
	if len(r.Ports) == 0 {
		return true
	}
	if proto == "icmp" {
		return false
	}
	for _, pr := range r.Ports {
		if port >= pr.From && port <= pr.To {
			return true
		}
	}
	return false
}

func unconstrained(r *config.Rule) bool { return len(r.Protocols) == 0 && len(r.Ports) == 0 }

// Decide applies the first matching rule of the flow's direction, else the
// default (egress) or allow (ingress: no matching ingress rule means allowed
// for published ports). Reserved addresses are always denied on egress.
func (p *Policy) Decide(f Flow) Decision {
	a := f.Addr.Unmap().WithZone("") // a zoned address is in no prefix: strip it
	g := p.classifier.Classify(a)
	if f.Direction == Egress && g == Reserved {
		return Decision{Allow: false, Rule: RuleReserved, Reason: ReasonRule, Group: g}
	}
	names := make([]string, len(f.Names))
	for i, n := range f.Names {
		names[i] = strings.ToLower(strings.TrimSuffix(n, "."))
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.Direction != f.Direction || !protoMatches(r, f.Protocol) || !portMatches(r, f.Protocol, f.Port) {
			continue
		}
		if p.destMatches(r, a, g, names) {
			return Decision{Allow: r.Action == "allow", Rule: r.ID, Reason: ReasonRule, Group: g}
		}
	}
	if f.Direction == Ingress {
		return Decision{Allow: true, Reason: ReasonDefault, Group: g}
	}
	return Decision{Allow: p.defaultAllow, Reason: ReasonDefault, Group: g}
}

// NameDecision says whether a DNS query for name may be forwarded upstream.
// Only rules that can reach the name's public addresses make it
// forwardable: a name rule (domain/suffix) matching it, `any` and the
// `public` group (unless they name icmp only: netd forwards no ICMP). An
// address rule for anything else (a CIDR, the host, private, … groups)
// never does: a policy that reaches only the host or a LAN address forwards
// no name (no exfiltration through queries). The first such rule that
// allows decides true; a matching unconditional deny (of the name, or of
// any) decides false; then the default. rule is the deciding rule's id ("" for
// the default).
//
// A LAN name (LANName) is forwarded only under a name rule for it: any and
// public do not reach the host's LAN resolver.
func (p *Policy) NameDecision(name string) (allow bool, rule string) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	lan := p.LANName(name)
	return p.mayAllow(func(r *config.Rule) (matches, allowOnly bool) {
		switch r.Dest.Kind {
		case "domain", "suffix":
			return nameMatches(r.Dest, name), false
		case "any":
			if lan {
				return r.Action == "deny", false
			}
			fallthrough
		case "group":
			if lan {
				return false, false
			}
		}
		switch r.Dest.Kind {
		case "any":
			if r.Action == "deny" {
				return true, false
			}
			return reachesPublic(r), true
		case "group":
			return r.Action == "allow" && r.Dest.Group == string(Public) && reachesPublic(r), true
		}
		return false, false
	})
}

// lanSuffixes are zones a host's resolver answers from its LAN (mDNS,
// home routers, split-horizon corporate DNS), never the internet.
var lanSuffixes = []string{"local", "lan", "home.arpa", "localhost", "localdomain", "internal"}

// LANName says whether a name is one only the host's LAN or the host
// itself can answer: a single label, a name under .local, .lan, .home.arpa,
// .localhost, .localdomain or .internal, or a reverse name (in-addr.arpa,
// ip6.arpa) that is not exactly the reverse of one public address (reverse
// zones of private, host, loopback, link-local, metadata … ranges, and
// partial reverse names that cover them).
func (p *Policy) LANName(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if !strings.Contains(name, ".") {
		return true
	}
	for _, s := range lanSuffixes {
		if name == s || strings.HasSuffix(name, "."+s) {
			return true
		}
	}
	if a, ok := reverseAddr(name); ok {
		return p.classifier.Classify(a) != Public
	}
	return strings.HasSuffix(name, ".arpa") && (name == "in-addr.arpa" || name == "ip6.arpa" ||
		strings.HasSuffix(name, ".in-addr.arpa") || strings.HasSuffix(name, ".ip6.arpa"))
}

// reverseAddr parses a full reverse name (d.c.b.a.in-addr.arpa, 32 nibbles
// .ip6.arpa); ok is false for anything else.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		l := strings.Split(rest, ".")
		if len(l) != 4 {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(l[3] + "." + l[2] + "." + l[1] + "." + l[0])
		return a, err == nil
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		l := strings.Split(rest, ".")
		if len(l) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, n := range l {
			if len(n) != 1 {
				return netip.Addr{}, false
			}
			v := strings.IndexByte("0123456789abcdef", n[0])
			if v < 0 {
				return netip.Addr{}, false
			}
			j := 31 - i
			if j%2 == 0 {
				b[j/2] |= byte(v) << 4
			} else {
				b[j/2] |= byte(v)
			}
		}
		return netip.AddrFrom16(b).Unmap(), true
	}
	return netip.Addr{}, false
}

// reachesPublic says whether an allow for public addresses carries flows a
// name is useful for (TCP or UDP: netd forwards no ICMP).
func reachesPublic(r *config.Rule) bool {
	return len(r.Protocols) == 0 || protoMatches(r, "tcp") || protoMatches(r, "udp")
}

// mayAllow walks the egress rules in order: the first rule that matches
// (by match) and allows decides true; the first matching deny with no
// protocol or port condition decides false (a deny of some ports only, or
// one match says is allowOnly, decides nothing); then the default.
func (p *Policy) mayAllow(match func(r *config.Rule) (matches, allowOnly bool)) (bool, string) {
	for i := range p.rules {
		r := &p.rules[i]
		if r.Direction != Egress {
			continue
		}
		matches, allowOnly := match(r)
		if !matches {
			continue
		}
		if r.Action == "allow" {
			return true, r.ID
		}
		if !allowOnly && unconstrained(r) {
			return false, r.ID
		}
	}
	return p.defaultAllow, ""
}

// rebindingGroups are the groups an answer for a name may point at only if
// the policy allows that group (by an address rule: a domain rule alone does
// not make a private answer acceptable).
var rebindingGroups = map[Group]bool{Private: true, Loopback: true, Host: true, LinkLocal: true, Metadata: true, Reserved: true}

// AnswerAllowed says whether a DNS answer binding a name to addr is kept. An
// answer at a private, loopback, host, link-local or metadata address is kept
// only if a rule for that address (any, a CIDR holding it or its group)
// allows it before any unconditional deny, or the default allows; a reserved
// address never. rule is the deciding rule's id.
func (p *Policy) AnswerAllowed(addr netip.Addr) (keep bool, rule string) {
	a := addr.Unmap()
	g := p.classifier.Classify(a)
	if !rebindingGroups[g] {
		return true, ""
	}
	if g == Reserved {
		return false, RuleReserved
	}
	return p.mayAllow(func(r *config.Rule) (matches, allowOnly bool) {
		switch r.Dest.Kind {
		case "domain", "suffix":
			return false, false // a name rule never admits a rebinding answer
		}
		return p.destMatches(r, a, g, nil), false
	})
}
