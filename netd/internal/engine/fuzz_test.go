package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// FuzzGuestFrames feeds arbitrary frames from the guest through netd's
// inbound filter and into its stack: whatever the guest sends, netd must not
// panic (a panic would take the sandbox's network down). `go test` runs the
// seeds; `go test -fuzz FuzzGuestFrames ./internal/engine` explores.
func FuzzGuestFrames(f *testing.F) {
	eth := func(typ uint16, payload ...byte) []byte {
		b := []byte{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, byte(typ >> 8), byte(typ)}
		return append(b, payload...)
	}
	f.Add(eth(0x0806))
	f.Add(eth(0x0806, 0, 1, 8, 0, 6, 4, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2))
	f.Add(eth(0x0800, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2, 8, 0, 0, 0, 0, 0, 0, 0))
	f.Add(eth(0x0800, 0x4f, 0, 0xff, 0xff, 0, 0, 0x20, 0, 64, 6, 0, 0, 10, 0, 2, 15, 203, 0, 113, 7))
	f.Add(eth(0x0800, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 15, 255, 255, 255, 255))
	f.Add(synTo([4]byte{203, 0, 113, 7}, 443))
	f.Add(eth(0x86dd, 0x60, 0, 0, 0, 0, 0, 17, 64))
	// The policy lets everything through to the dial (so the allowed paths
	// are fuzzed too), and the dial refuses: a fuzzed SYN or datagram never
	// leaves this machine. DNS goes to a closed port on 127.0.0.1.
	cfg := baseConfig(f, `[{"action":"allow","dest":{"kind":"any"},"id":"allow@any"}]`, "deny", nil)
	var dials atomic.Int64
	refuse := func(context.Context, string, string) (net.Conn, error) {
		dials.Add(1)
		return nil, errors.New("fuzz: no host dials")
	}
	e, err := New(cfg, NewOutput(io.Discard), Options{
		Dial: refuse, HostAddrs: []netip.Addr{}, Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")},
	})
	if err != nil {
		f.Fatal(err)
	}
	defer e.Close()
	if len(e.up) != 1 || e.up[0].Addr() != netip.MustParseAddr("127.0.0.1") {
		f.Fatalf("fuzz upstreams: %v", e.up)
	}
	// The SYN seed reaches the dial (on the forwarder's goroutine): proof
	// that the stub, not the policy, is what keeps the fuzz on the machine.
	// (Only where the seeds ran: under -fuzz the coordinating process runs
	// none, its workers do.)
	var ran atomic.Int64
	f.Cleanup(func() {
		if ran.Load() > 0 && !waitFor(2*time.Second, func() bool { return dials.Load() > 0 }) {
			f.Error("the SYN seed never reached the (refusing) dial")
		}
	})
	f.Fuzz(func(t *testing.T, frame []byte) {
		ran.Add(1)
		if len(frame) < 14 || len(frame) > cfg.MTU+14 {
			return
		}
		if e.inbound(frame) {
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
			e.ep.InjectInbound(0, pkt)
			pkt.DecRef()
		}
	})
}

// synTo is a guest frame carrying a TCP SYN (checksums right) to addr:port.
func synTo(addr [4]byte, port uint16) []byte {
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.TCPMinimumSize)
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(guestMACBytes()), DstAddr: ourMAC, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	src, dst := tcpip.AddrFrom4([4]byte{10, 0, 2, 15}), tcpip.AddrFrom4(addr)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b) - header.EthernetMinimumSize), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(ip.Payload())
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: port, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return b
}

func guestMACBytes() []byte {
	m, _ := net.ParseMAC(guestMACStr)
	return m
}
