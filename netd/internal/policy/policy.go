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
}

// New compiles the configured policy.
func New(p config.Policy, c *Classifier) *Policy {
	return &Policy{rules: p.Rules, defaultAllow: p.Default == "allow", classifier: c}
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
		return r.CIDR.Contains(a) && !p.classifier.inSubnet(a)
	case "group":
		return string(g) == r.Dest.Group
	case "domain", "suffix":
		for _, n := range names {
			if nameMatches(r.Dest, n) {
				return true
			}
		}
	}
	return false
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
	a := f.Addr.Unmap()
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

// NameDecision says whether a DNS query for name may be forwarded: true
// unless no rule for that name or for the addresses it may resolve to can
// allow it (a deny of the name or of everything before any such allow, or
// no allow at all under a default deny). rule is the id of the rule that
// decided ("" for the default).
func (p *Policy) NameDecision(name string) (allow bool, rule string) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	return p.mayAllow(func(r *config.Rule) (matches, allowOnly bool) {
		switch r.Dest.Kind {
		case "any":
			return true, false
		case "domain", "suffix":
			return nameMatches(r.Dest, name), false
		}
		return true, true // cidr, group: an allow may admit the answer, a deny decides nothing yet
	})
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
