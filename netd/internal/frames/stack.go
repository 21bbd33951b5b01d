package frames

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// NIC is the one NIC of every stack made here.
const NIC tcpip.NICID = 1

// TCPBuffer bounds each TCP endpoint's receive and send buffers (so a
// stack's memory per flow is bounded whatever the peer sends).
const TCPBuffer = 1 << 20

// NewStack makes an IPv4 netstack (ARP, TCP with SACK, UDP, ICMP) with one
// Ethernet NIC over a channel endpoint of the given MTU and MAC: the
// endpoint a Link pumps.
func NewStack(mtu int, mac tcpip.LinkAddress) (*stack.Stack, *channel.Endpoint, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: TCPBuffer}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: TCPBuffer}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	ep := channel.New(1024, uint32(mtu), mac)
	if err := s.CreateNIC(NIC, ethernet.New(ep)); err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("netstack: %s", err)
	}
	return s, ep, nil
}
