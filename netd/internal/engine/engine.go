// Package engine is netd's network engine: a gVisor netstack on the guest's
// end of the frame socket that terminates every guest flow and re-dials it
// from the host only when the policy allows, serves the guest's DNS, and
// publishes ports.
package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/frames"
	"krunbox.dev/netd/internal/policy"
)

const (
	nicID = frames.NIC
	// DialTimeout bounds a host dial for an allowed guest flow: past it the
	// guest gets a RST.
	DialTimeout = 5 * time.Second
	// UDPIdle ends a UDP flow that carried nothing either way for this long.
	UDPIdle = 60 * time.Second
	// RuleGateway is the engine's own denial of flows to the gateway
	// addresses other than DNS.
	RuleGateway = "netd:gateway"
	// RuleICMP is the engine's denial of ICMP echo beyond netd's own
	// addresses (netd does not forward ICMP).
	RuleICMP = "netd:icmp-not-forwarded"
	// RuleHostSelf is the engine's denial of an allowed flow whose host
	// dial landed on the host itself while the policy does not allow the
	// host group.
	RuleHostSelf = "netd:landed-on-host"
)

// ourMAC is netd's side of the link (locally administered).
var ourMAC = tcpip.LinkAddress("\x5a\x94\xef\xe4\x0c\xdd")

// Options are what the process (or a test) chooses beyond the config.
type Options struct {
	// Peer checks the frame socket's peer; nil: VMMPeer.
	Peer PeerCheck
	// HostAddrs are the host's own interface addresses; nil: read them.
	HostAddrs []netip.Addr
	// Upstreams overrides the DNS upstreams when the config names none;
	// nil: /etc/resolv.conf.
	Upstreams []netip.AddrPort
	// UDPIdle ends a UDP flow idle this long; 0: UDPIdle.
	UDPIdle time.Duration
	// Dial opens the host socket of an allowed guest flow ("tcp" or "udp");
	// nil: a dialer with HostSocketBuffer buffers.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Log receives human log lines (stderr).
	Log func(format string, args ...any)
}

// Stats are the engine's counters.
type Stats struct {
	Type        string `json:"type"`
	RxBytes     uint64 `json:"rxBytes"`
	TxBytes     uint64 `json:"txBytes"`
	Connections int    `json:"connections"`
	Flows       uint64 `json:"flows"`
	// EventsDropped counts events never written (see Events.Dropped).
	EventsDropped uint64 `json:"eventsDropped"`
}

// Engine is one sandbox's network.
type Engine struct {
	cfg    *config.Config
	opts   Options
	out    *Output
	Events *Events
	pol    *policy.Policy
	names  *policy.Names
	flows  table
	up     []netip.AddrPort
	mitm   *interceptor  // nil without secrets: no interception at all
	leaks  *placeholders // nil without secrets: nothing is scanned

	stack *stack.Stack
	ep    *channel.Endpoint
	ln    *net.UnixListener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	fc      *frames.Conn
	closers []func()
	live    map[uint64]func()
	liveSeq uint64
	closed  bool
}

// New builds the engine (the stack, policy and DNS state) without touching
// the network; Listen then Serve run it.
func New(cfg *config.Config, out *Output, opts Options) (*Engine, error) {
	if opts.Peer == nil {
		opts.Peer = VMMPeer
	}
	if opts.UDPIdle <= 0 {
		opts.UDPIdle = UDPIdle
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.HostAddrs == nil {
		addrs, err := hostAddrs()
		if err != nil {
			return nil, fmt.Errorf("reading the host's addresses: %w", err)
		}
		opts.HostAddrs = addrs
	}
	host := append([]netip.Addr{cfg.HostIP}, opts.HostAddrs...)
	cl := policy.NewClassifier(host, cfg.Subnet, []netip.Addr{cfg.GatewayIP, cfg.DNSIP, cfg.HostIP})
	e := &Engine{cfg: cfg, opts: opts, out: out, pol: policy.New(cfg.Policy, cfg.DNSHosts, cl), names: policy.NewNames(nil)}
	e.Events = NewEvents(out, nil)
	e.flows.max = cfg.MaxConnections
	e.up = cfg.DNSUpstreams
	if len(e.up) == 0 {
		e.up = opts.Upstreams
	}
	if len(e.up) == 0 {
		e.up = resolvConf("/etc/resolv.conf")
	}
	mitm, err := newInterceptor(cfg)
	if err != nil {
		return nil, err
	}
	e.mitm = mitm
	e.leaks = newPlaceholders(cfg.Secrets)
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if err := e.buildStack(); err != nil {
		return nil, err
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.Events.Run(e.ctx)
	}()
	return e, nil
}

func hostAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

func netipAddr(a tcpip.Address) netip.Addr {
	n, _ := netip.AddrFromSlice(a.AsSlice())
	return n.Unmap()
}

func (e *Engine) buildStack() error {
	s, ep, err := frames.NewStack(e.cfg.MTU, ourMAC)
	if err != nil {
		return err
	}
	e.ep = ep
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	for _, a := range []netip.Addr{e.cfg.GatewayIP, e.cfg.DNSIP, e.cfg.HostIP} {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpipAddr(a), PrefixLen: e.cfg.Subnet.Bits()}}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})
	if err := s.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, tcpipAddr(e.cfg.GuestIP), tcpip.LinkAddress(e.cfg.GuestMAC)); err != nil {
		return fmt.Errorf("netstack: neighbour: %s", err)
	}
	e.stack = s
	e.installTCP()
	e.installUDP()
	return nil
}

// Listen creates the frame socket (0600; the directory must be 0700 and
// ours) and starts the published ports and the DNS service.
func (e *Engine) Listen() error {
	dir := dirOf(e.cfg.Socket)
	st, err := os.Stat(dir)
	if err != nil {
		return &config.Error{Field: "socket", Message: fmt.Sprintf("its directory: %v", err)}
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || st.Mode().Perm()&0o077 != 0 || (sys != nil && sys.Uid != uint32(os.Getuid())) {
		return &config.Error{Field: "socket", Message: fmt.Sprintf("its directory %s must be a 0700 directory of uid %d (is %v)", dir, os.Getuid(), st.Mode())}
	}
	if fi, err := os.Lstat(e.cfg.Socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return &config.Error{Field: "socket", Message: fmt.Sprintf("%s exists and is not a socket", e.cfg.Socket)}
		}
		_ = os.Remove(e.cfg.Socket) // a stale socket of an earlier netd
	}
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.cfg.Socket, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", e.cfg.Socket, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(e.cfg.Socket, 0o600); err != nil {
		_ = ln.Close()
		return err
	}
	e.ln = ln
	e.onClose(func() { _ = ln.Close() })
	if err := e.startDNS(); err != nil {
		return err
	}
	return e.startPorts()
}

func dirOf(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "/"
}

func (e *Engine) onClose(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		f()
		return
	}
	e.closers = append(e.closers, f)
}

// Serve accepts the one frame peer (others are refused and reported) and
// runs the link until the peer goes, the context ends or Close is called.
func (e *Engine) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
		case <-e.ctx.Done():
		}
		_ = e.ln.Close()
	}()
	var conn *net.UnixConn
	for {
		c, err := e.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || e.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("frame socket: %w", err)
		}
		cred, err := peerCred(c)
		if err == nil {
			err = e.opts.Peer(cred.Pid, cred.Uid)
		}
		if err != nil {
			_ = c.Close()
			e.out.Error("frame socket: refused a peer: " + err.Error())
			continue
		}
		conn = c
		break
	}
	_ = e.ln.Close() // exactly one peer
	fc := frames.NewConn(conn, e.cfg.MTU+header.EthernetMinimumSize)
	e.mu.Lock()
	e.fc = fc
	e.mu.Unlock()
	l := &frames.Link{FC: fc, EP: e.ep, In: e.inbound}
	err := l.Run(ctx)
	if errors.Is(err, frames.ErrFrame) {
		e.out.Error(err.Error())
	}
	return err
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	open, total := e.flows.counts()
	st := Stats{Type: "stats", Connections: open, Flows: total, EventsDropped: e.Events.Dropped()}
	e.mu.Lock()
	if e.fc != nil {
		st.RxBytes, st.TxBytes = e.fc.Rx.Load(), e.fc.Tx.Load()
	}
	e.mu.Unlock()
	return st
}

// Close ends every flow, listener and the stack.
func (e *Engine) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	closers := e.closers
	e.closers = nil
	live := e.live
	e.live = nil
	e.mu.Unlock()
	e.cancel()
	for _, f := range closers {
		f()
	}
	for _, f := range live {
		f()
	}
	e.stack.Close()
	e.ep.Close()
	e.wg.Wait()
	e.stack.Wait()
}

// track registers a closer for a flow's lifetime (Close runs it); the
// returned func unregisters it.
func (e *Engine) track(f func()) (untrack func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		go f()
		return func() {}
	}
	if e.live == nil {
		e.live = map[uint64]func(){}
	}
	e.liveSeq++
	id := e.liveSeq
	e.live[id] = f
	return func() {
		e.mu.Lock()
		delete(e.live, id)
		e.mu.Unlock()
	}
}

// liveFlows counts the flows Close would end.
func (e *Engine) liveFlows() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.live)
}

// inbound filters frames from the guest: ARP requests are answered here;
// only IPv4 from the guest's own address reaches the stack; ICMP echo beyond
// netd's own addresses is decided (and, not being forwarded, dropped) here.
func (e *Engine) inbound(frame []byte) bool {
	eth := header.Ethernet(frame)
	switch eth.Type() {
	case header.ARPProtocolNumber:
		if rep, ok := arpReply(frame, ourMAC, e.cfg.GuestIP); ok {
			e.mu.Lock()
			fc := e.fc
			e.mu.Unlock()
			if fc != nil && fc.Write(rep) == nil {
				_ = fc.Flush()
			}
		}
		return false
	case header.IPv4ProtocolNumber:
	default:
		return false
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	if !ip.IsValid(len(frame) - header.EthernetMinimumSize) {
		return false
	}
	if src := netipAddr(ip.SourceAddress()); src != e.cfg.GuestIP {
		return false
	}
	if ip.TransportProtocol() == header.ICMPv4ProtocolNumber && ip.FragmentOffset() == 0 && len(ip.Payload()) >= header.ICMPv4MinimumSize {
		if header.ICMPv4(ip.Payload()).Type() == header.ICMPv4Echo {
			return e.allowEcho(netipAddr(ip.DestinationAddress()))
		}
	}
	return true
}

func (e *Engine) allowEcho(dst netip.Addr) bool {
	if dst == e.cfg.GatewayIP || dst == e.cfg.DNSIP {
		return true // netd itself answers
	}
	d := e.pol.Decide(policy.Flow{Direction: policy.Egress, Protocol: "icmp", Addr: dst, Names: e.names.Lookup(dst)})
	if dst == e.cfg.HostIP && d.Allow {
		e.emit("icmp", dst, 0, d, "")
		return true // netd answers for the host, which the policy lets the guest reach
	}
	if d.Allow {
		d = policy.Decision{Allow: false, Rule: RuleICMP, Reason: policy.ReasonRule}
	}
	e.emit("icmp", dst, 0, d, "")
	return false
}

// egress decides a guest flow; target is what the host dials.
func (e *Engine) egress(proto string, dst netip.Addr, port int) (d policy.Decision, target netip.Addr, name string) {
	if dst == e.cfg.GatewayIP || dst == e.cfg.DNSIP {
		return policy.Decision{Allow: false, Rule: RuleGateway, Reason: policy.ReasonRule}, dst, ""
	}
	names := e.names.Lookup(dst)
	if len(names) > 0 {
		name = names[0]
	}
	d = e.pol.Decide(policy.Flow{Direction: policy.Egress, Protocol: proto, Addr: dst, Port: port, Names: names})
	target = dst
	if dst == e.cfg.HostIP {
		target = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if name == "" {
			name = hostName
		}
	}
	return d, target, name
}

func (e *Engine) emit(proto string, addr netip.Addr, port int, d policy.Decision, name string) {
	e.emitDir(policy.Egress, proto, addr, port, d, name)
}

func (e *Engine) emitDir(dir, proto string, addr netip.Addr, port int, d policy.Decision, name string) {
	action := "denied"
	if d.Allow {
		action = "allowed"
	}
	e.Events.Emit(Event{Direction: dir, Protocol: proto, Address: addr.String(), Port: port, Name: name, Action: action, Rule: d.Rule, Reason: d.Reason})
}

// limited is the decision for a flow over maxConnections.
var limited = policy.Decision{Allow: false, Reason: policy.ReasonLimit}
