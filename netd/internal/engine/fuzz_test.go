package engine

import (
	"io"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
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
	f.Add(eth(0x86dd, 0x60, 0, 0, 0, 0, 0, 17, 64))
	cfg := baseConfig(f, rulesPublic, "deny", nil)
	e, err := New(cfg, NewOutput(io.Discard), Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer e.Close()
	f.Fuzz(func(t *testing.T, frame []byte) {
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
