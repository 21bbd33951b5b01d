package engine

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/policy"
)

const (
	// hostName names the host (its loopback) for the guest.
	hostName = config.HostName
	// UpstreamTimeout bounds one upstream exchange.
	UpstreamTimeout = 3 * time.Second
	// hostsTTL is the TTL of answers from dns.hosts.
	hostsTTL = 60
	// maxDNSInFlight bounds concurrent queries being answered.
	maxDNSInFlight = 64
)

// resolvConf reads the nameservers of a resolv.conf (port 53).
func resolvConf(path string) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Zone() == "" {
				out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
			}
		}
	}
	return out
}

// startDNS serves DNS on the DNS and gateway addresses, port 53, UDP and TCP.
func (e *Engine) startDNS() error {
	sem := make(chan struct{}, maxDNSInFlight)
	for _, a := range []netip.Addr{e.cfg.DNSIP, e.cfg.GatewayIP} {
		fa := tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(a), Port: 53}
		uc, err := gonet.DialUDP(e.stack, &fa, nil, ipv4.ProtocolNumber)
		if err != nil {
			return err
		}
		e.onClose(func() { _ = uc.Close() })
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.serveDNSUDP(uc, a, sem)
		}()
		tl, err := gonet.ListenTCP(e.stack, fa, ipv4.ProtocolNumber)
		if err != nil {
			return err
		}
		e.onClose(func() { _ = tl.Close() })
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.serveDNSTCP(tl, a, sem)
		}()
	}
	return nil
}

func (e *Engine) serveDNSUDP(uc *gonet.UDPConn, local netip.Addr, sem chan struct{}) {
	buf := make([]byte, 65536)
	for {
		n, from, err := uc.ReadFrom(buf)
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // too many queries at once: this one is dropped (the client retries)
		}
		query := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { <-sem }()
			req := new(dns.Msg)
			if req.Unpack(query) != nil {
				return
			}
			resp := e.answer(req, "udp", local)
			if resp == nil {
				return
			}
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
				size = int(opt.UDPSize())
			}
			resp.Truncate(size)
			if out, err := resp.Pack(); err == nil {
				_, _ = uc.WriteTo(out, from)
			}
		}()
	}
}

func (e *Engine) serveDNSTCP(tl *gonet.TCPListener, local netip.Addr, sem chan struct{}) {
	for {
		c, err := tl.Accept()
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			_ = c.Close()
			continue
		}
		go func() {
			defer func() { <-sem }()
			defer c.Close()
			untrack := e.track(func() { _ = c.Close() })
			defer untrack()
			dc := &dns.Conn{Conn: c}
			for {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				req, err := dc.ReadMsg()
				if err != nil {
					return
				}
				resp := e.answer(req, "tcp", local)
				if resp == nil || dc.WriteMsg(resp) != nil {
					return
				}
			}
		}()
	}
}

// answer makes the reply to one query: dns.hosts and host.krunbox.internal
// locally, a name the policy denies NXDOMAIN (never forwarded), any other
// name forwarded with rebinding answers dropped; kept addresses are bound to
// the name in the sandbox's table.
func (e *Engine) answer(req *dns.Msg, proto string, local netip.Addr) *dns.Msg {
	if req.Response {
		return nil
	}
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		if len(req.Question) != 1 {
			resp.SetRcode(req, dns.RcodeFormatError)
		}
		return resp
	}
	q := req.Question[0]
	name, err := config.NormalizeName(q.Name)
	if err != nil {
		resp.SetRcode(req, dns.RcodeNameError)
		return resp
	}
	if e.leaks != nil {
		// A placeholder in a name is exfiltration: never answered, never
		// forwarded (the event names no name: it would hold the placeholder).
		if s := e.leaks.inName(name); s != nil {
			e.secretBlocked(policy.Egress, proto, local, 53, "", s)
			resp.SetRcode(req, dns.RcodeNameError)
			return resp
		}
	}
	if a, ok := e.localName(name); ok {
		resp.SetReply(req)
		resp.Authoritative = true
		if rr := addrRR(q, a); rr != nil && q.Qclass == dns.ClassINET {
			resp.Answer = append(resp.Answer, rr)
			// host.krunbox.internal is never bound: only the host group
			// reaches hostAddress, no name rule does.
			if name != hostName {
				e.names.Add(name, a, hostsTTL*time.Second)
			}
		}
		return resp
	}
	if allow, rule := e.pol.NameDecision(name); !allow {
		reason := policy.ReasonDNS
		e.Events.Emit(Event{Direction: policy.Egress, Protocol: proto, Address: local.String(), Port: 53, Name: name, Action: "denied", Rule: rule, Reason: reason})
		resp.SetRcode(req, dns.RcodeNameError)
		return resp
	}
	up := e.forward(upstreamQuery(req, name), proto)
	if up == nil {
		resp.SetRcode(req, dns.RcodeServerFailure)
		return resp
	}
	up.Id = req.Id
	up.Question = req.Question // the guest's own spelling (netd asked in lower case)
	kept := up.Answer[:0]
	for _, rr := range up.Answer {
		a, ok := rrAddr(rr)
		if !ok {
			kept = append(kept, rr)
			continue
		}
		if keep, rule := e.pol.AnswerAllowed(a); !keep {
			e.Events.Emit(Event{Direction: policy.Egress, Protocol: proto, Address: a.String(), Port: 53, Name: name, Action: "denied", Rule: rule, Reason: policy.ReasonRebinding})
			continue
		}
		// Bound to the name the guest asked for only (through any CNAME
		// chain): an answer cannot bind an address to some other name.
		e.names.Add(name, a, time.Duration(rr.Header().Ttl)*time.Second)
		kept = append(kept, rr)
	}
	up.Answer = kept
	// Addresses elsewhere in the message (glue) are dropped: only answers count.
	strip := func(rrs []dns.RR) []dns.RR {
		out := rrs[:0]
		for _, rr := range rrs {
			if _, ok := rrAddr(rr); !ok {
				out = append(out, rr)
			}
		}
		return out
	}
	up.Ns = strip(up.Ns)
	up.Extra = strip(up.Extra)
	for _, rrs := range [][]dns.RR{up.Answer, up.Ns, up.Extra} {
		for _, rr := range rrs {
			e.stripHints(rr)
		}
	}
	// The upstream's EDNS record is its own: the guest gets a plain one if
	// it sent one.
	extra := up.Extra[:0]
	for _, rr := range up.Extra {
		if _, ok := rr.(*dns.OPT); !ok {
			extra = append(extra, rr)
		}
	}
	up.Extra = extra
	if opt := req.IsEdns0(); opt != nil {
		up.SetEdns0(upstreamUDPSize, opt.Do())
	}
	return up
}

// upstreamUDPSize is the EDNS UDP size netd offers (and tells the guest).
const upstreamUDPSize = 1232

// upstreamQuery is the query netd sends for a guest's: built afresh from
// the question alone (the name in lower case, its type and class), so that
// nothing else the guest put in its message (EDNS options, other records,
// its ID, the letter case of the name) reaches the upstream.
func upstreamQuery(req *dns.Msg, name string) *dns.Msg {
	q := req.Question[0]
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), q.Qtype)
	m.Question[0].Qclass = q.Qclass
	m.CheckingDisabled = req.CheckingDisabled
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	m.SetEdns0(upstreamUDPSize, do)
	return m
}

// stripHints drops the non-public ipv4hint/ipv6hint addresses of an SVCB or
// HTTPS record (and the hint itself when none is left): a hint is an address
// a client may dial without asking for A/AAAA.
func (e *Engine) stripHints(rr dns.RR) {
	var svcb *dns.SVCB
	switch v := rr.(type) {
	case *dns.SVCB:
		svcb = v
	case *dns.HTTPS:
		svcb = &v.SVCB
	default:
		return
	}
	public := func(ips []net.IP) []net.IP {
		out := ips[:0]
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip); ok && e.pol.Classify(a.Unmap()) == policy.Public {
				out = append(out, ip)
			}
		}
		return out
	}
	kept := svcb.Value[:0]
	for _, kv := range svcb.Value {
		switch h := kv.(type) {
		case *dns.SVCBIPv4Hint:
			if h.Hint = public(h.Hint); len(h.Hint) == 0 {
				continue
			}
		case *dns.SVCBIPv6Hint:
			if h.Hint = public(h.Hint); len(h.Hint) == 0 {
				continue
			}
		}
		kept = append(kept, kv)
	}
	svcb.Value = kept
}

// localName answers dns.hosts and host.krunbox.internal.
func (e *Engine) localName(name string) (netip.Addr, bool) {
	if a, ok := e.cfg.DNSHosts[name]; ok {
		return a, true
	}
	if name == hostName {
		return e.cfg.HostIP, true
	}
	return netip.Addr{}, false
}

func addrRR(q dns.Question, a netip.Addr) dns.RR {
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: hostsTTL}
	switch {
	case q.Qtype == dns.TypeA && a.Is4():
		hdr.Rrtype = dns.TypeA
		return &dns.A{Hdr: hdr, A: net.IP(a.AsSlice())}
	case q.Qtype == dns.TypeAAAA && a.Is6():
		hdr.Rrtype = dns.TypeAAAA
		return &dns.AAAA{Hdr: hdr, AAAA: net.IP(a.AsSlice())}
	}
	return nil
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	var ip net.IP
	switch v := rr.(type) {
	case *dns.A:
		ip = v.A
	case *dns.AAAA:
		ip = v.AAAA
	default:
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// forward asks the upstreams in turn (UDP, then TCP on truncation; TCP when
// the guest asked over TCP).
func (e *Engine) forward(query *dns.Msg, proto string) *dns.Msg {
	ctx, cancel := context.WithTimeout(e.ctx, 2*UpstreamTimeout)
	defer cancel()
	for _, up := range e.up {
		for _, net := range []string{proto, "tcp"} {
			c := &dns.Client{Net: net, Timeout: UpstreamTimeout}
			m, _, err := c.ExchangeContext(ctx, query.Copy(), up.String())
			if err != nil {
				break // next upstream
			}
			if m.Truncated && net == "udp" {
				continue
			}
			return m
		}
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}
