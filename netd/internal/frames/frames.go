// Package frames speaks the VMM's stream framing (QEMU -netdev stream,
// passt, libkrun unixstream: a 4-byte big-endian length, then one Ethernet
// frame) and joins such a stream to a gVisor NIC.
package frames

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// MaxFrame is the largest frame the stream framing carries whatever the MTU.
const MaxFrame = 65550

// Conn speaks the stream framing (QEMU -netdev stream / passt /
// libkrun unixstream): a 4-byte big-endian length, then one Ethernet frame.
type Conn struct {
	conn io.ReadWriteCloser
	r    *bufio.Reader
	max  int
	wmu  sync.Mutex
	w    *bufio.Writer
	lenb [4]byte
	rbuf []byte
	// Rx counts frame bytes written (towards the peer), Tx frame bytes read.
	Rx atomic.Uint64
	Tx atomic.Uint64
}

// NewConn frames c; a frame longer than maxFrame (at most MaxFrame) or
// shorter than an Ethernet header ends the connection.
func NewConn(c io.ReadWriteCloser, maxFrame int) *Conn {
	if maxFrame > MaxFrame {
		maxFrame = MaxFrame
	}
	return &Conn{conn: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriterSize(c, 256<<10), max: maxFrame, rbuf: make([]byte, maxFrame)}
}

// ErrFrame is a framing violation: the connection ends.
var ErrFrame = errors.New("frame")

// Read returns the next frame; the slice is valid until the next read.
func (f *Conn) Read() ([]byte, error) {
	if _, err := io.ReadFull(f.r, f.lenb[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(f.lenb[:]))
	if n < header.EthernetMinimumSize || n > f.max {
		return nil, fmt.Errorf("%w: a frame of %d bytes (allowed %d..%d): ending the connection", ErrFrame, n, header.EthernetMinimumSize, f.max)
	}
	if _, err := io.ReadFull(f.r, f.rbuf[:n]); err != nil {
		return nil, err
	}
	f.Tx.Add(uint64(n))
	return f.rbuf[:n], nil
}

// Write queues one frame made of parts; flush sends what is queued.
func (f *Conn) Write(parts ...[]byte) error {
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
	f.Rx.Add(uint64(n))
	return nil
}

// Flush sends what Write queued.
func (f *Conn) Flush() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.Flush()
}

// Filter decides, before the stack sees it, what happens to one frame from
// the guest: true hands it to the stack.
type Filter func(frame []byte) bool

// Link joins a frame connection to a netstack NIC (a channel endpoint under
// an Ethernet endpoint).
type Link struct {
	FC *Conn
	EP *channel.Endpoint
	// In, when set, sees each frame from the peer first.
	In Filter
}

// Run pumps frames both ways until the connection or ctx ends.
func (l *Link) Run(ctx context.Context) error {
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
	_ = l.FC.conn.Close()
	return err
}

func (l *Link) pumpIn() error {
	for {
		frame, err := l.FC.Read()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if l.In != nil && !l.In(frame) {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		l.EP.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

func (l *Link) pumpOut(ctx context.Context) error {
	for {
		pkt := l.EP.ReadContext(ctx)
		if pkt == nil {
			return nil
		}
		for {
			err := l.FC.Write(pkt.AsSlices()...)
			pkt.DecRef()
			if err != nil {
				return err
			}
			if l.EP.NumQueued() == 0 {
				break
			}
			if pkt = l.EP.Read(); pkt == nil {
				break
			}
		}
		if err := l.FC.Flush(); err != nil {
			return err
		}
	}
}
