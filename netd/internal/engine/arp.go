package engine

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

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
