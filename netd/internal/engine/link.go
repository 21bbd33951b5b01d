package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// MaxFrame is the largest frame the stream framing carries whatever the MTU.
const MaxFrame = 65550

// frameConn speaks the stream framing (QEMU -netdev stream / passt /
// libkrun unixstream): a 4-byte big-endian length, then one Ethernet frame.
type frameConn struct {
	conn io.ReadWriteCloser
	r    *bufio.Reader
	max  int
	wmu  sync.Mutex
	w    *bufio.Writer
	lenb [4]byte
	rbuf []byte
	rx   atomic.Uint64 // bytes written (towards the peer)
	tx   atomic.Uint64 // bytes read (from the peer)
}

func newFrameConn(c io.ReadWriteCloser, maxFrame int) *frameConn {
	if maxFrame > MaxFrame {
		maxFrame = MaxFrame
	}
	return &frameConn{conn: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriterSize(c, 256<<10), max: maxFrame, rbuf: make([]byte, maxFrame)}
}

// errFrame is a framing violation: the connection ends.
var errFrame = errors.New("frame")

// read returns the next frame; the slice is valid until the next read.
func (f *frameConn) read() ([]byte, error) {
	if _, err := io.ReadFull(f.r, f.lenb[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(f.lenb[:]))
	if n < header.EthernetMinimumSize || n > f.max {
		return nil, fmt.Errorf("%w: a frame of %d bytes (allowed %d..%d): ending the connection", errFrame, n, header.EthernetMinimumSize, f.max)
	}
	if _, err := io.ReadFull(f.r, f.rbuf[:n]); err != nil {
		return nil, err
	}
	f.tx.Add(uint64(n))
	return f.rbuf[:n], nil
}

// write queues one frame made of parts; flush sends what is queued.
func (f *frameConn) write(parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(n))
	if _, err := f.w.Write(l[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := f.w.Write(p); err != nil {
			return err
		}
	}
	f.rx.Add(uint64(n))
	return nil
}

func (f *frameConn) flush() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.Flush()
}

// filter decides, before the stack sees it, what happens to one frame from
// the guest: true hands it to the stack.
type filter func(frame []byte) bool

// link joins a frame connection to a netstack NIC (a channel endpoint under
// an Ethernet endpoint).
type link struct {
	fc *frameConn
	ep *channel.Endpoint
	in filter
}

// run pumps frames both ways until the connection or ctx ends.
func (l *link) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- l.pumpOut(ctx) }()
	go func() { errc <- l.pumpIn() }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	cancel()
	_ = l.fc.conn.Close()
	return err
}

func (l *link) pumpIn() error {
	for {
		frame, err := l.fc.read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if l.in != nil && !l.in(frame) {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		l.ep.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

func (l *link) pumpOut(ctx context.Context) error {
	for {
		pkt := l.ep.ReadContext(ctx)
		if pkt == nil {
			return nil
		}
		for {
			err := l.fc.write(pkt.AsSlices()...)
			pkt.DecRef()
			if err != nil {
				return err
			}
			if l.ep.NumQueued() == 0 {
				break
			}
			if pkt = l.ep.Read(); pkt == nil {
				break
			}
		}
		if err := l.fc.flush(); err != nil {
			return err
		}
	}
}

// arpReply answers an ARP request for any address but the guest's own with
// netd's MAC: every address on the guest's subnet is netd, so a connection to
// one that serves nothing is refused at once rather than left to an ARP
// timeout. It returns false for frames that are not ARP requests to answer.
func arpReply(frame []byte, ourMAC tcpip.LinkAddress, guestIP netip.Addr) ([]byte, bool) {
	eth := header.Ethernet(frame)
	if eth.Type() != header.ARPProtocolNumber || len(frame) < header.EthernetMinimumSize+header.ARPSize {
		return nil, false
	}
	req := header.ARP(frame[header.EthernetMinimumSize:])
	if !req.IsValid() || req.Op() != header.ARPRequest {
		return nil, false
	}
	target, _ := netip.AddrFromSlice(req.ProtocolAddressTarget())
	sender, _ := netip.AddrFromSlice(req.ProtocolAddressSender())
	if target == guestIP || !sender.IsValid() || sender.IsUnspecified() || target == sender {
		return nil, false
	}
	out := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(out).Encode(&header.EthernetFields{
		SrcAddr: ourMAC, DstAddr: tcpip.LinkAddress(req.HardwareAddressSender()), Type: header.ARPProtocolNumber,
	})
	rep := header.ARP(out[header.EthernetMinimumSize:])
	rep.SetIPv4OverEthernet()
	rep.SetOp(header.ARPReply)
	copy(rep.HardwareAddressSender(), ourMAC)
	copy(rep.ProtocolAddressSender(), req.ProtocolAddressTarget())
	copy(rep.HardwareAddressTarget(), req.HardwareAddressSender())
	copy(rep.ProtocolAddressTarget(), req.ProtocolAddressSender())
	return out, true
}
