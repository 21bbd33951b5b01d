// Package guest is a test guest: a real gVisor netstack with an Ethernet NIC
// on the far end of a frame socket, configured like the agent configures a
// krunbox guest (static address, default route via the gateway). netd's
// integration tests and benchmarks drive netd through it.
package guest

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"krunbox.dev/netd/internal/frames"
)

// Guest is one test guest.
type Guest struct {
	Stack  *stack.Stack
	IP     netip.Addr
	cancel context.CancelFunc
}

func addr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// New starts a guest on conn with address ip (its prefix the subnet), the
// default route via gw, and the given MAC and MTU.
func New(conn net.Conn, mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr, mtu int) (*Guest, error) {
	s, ep, err := frames.NewStack(mtu, tcpip.LinkAddress(mac))
	if err != nil {
		return nil, err
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr(ip.Addr()), PrefixLen: ip.Bits()}}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("guest address: %s", err)
	}
	subnet, err := tcpip.NewSubnet(addr(ip.Masked().Addr()), tcpip.MaskFromBytes(net.CIDRMask(ip.Bits(), 32)))
	if err != nil {
		return nil, err
	}
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: 1}, {Destination: header.IPv4EmptySubnet, Gateway: addr(gw), NIC: 1}})
	l := &frames.Link{FC: frames.NewConn(conn, mtu+header.EthernetMinimumSize), EP: ep}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = l.Run(ctx) }()
	return &Guest{Stack: s, IP: ip.Addr(), cancel: cancel}, nil
}

// Full is a guest-side address.
func Full(a string, port int) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: addr(netip.MustParseAddr(a)), Port: uint16(port)}
}

// DialTCP connects from the guest.
func (g *Guest) DialTCP(ctx context.Context, a string, port int) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, g.Stack, Full(a, port), ipv4.ProtocolNumber)
}

// DialUDP makes a connected UDP socket in the guest.
func (g *Guest) DialUDP(a string, port int) (*gonet.UDPConn, error) {
	ra := Full(a, port)
	return gonet.DialUDP(g.Stack, nil, &ra, ipv4.ProtocolNumber)
}

// Close stops the guest.
func (g *Guest) Close() {
	g.cancel()
	g.Stack.Close()
}
