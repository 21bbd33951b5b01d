package policy

import (
	"net/netip"
	"testing"
)

func TestClassifyEverySpecialRange(t *testing.T) {
	c := NewClassifier(
		[]netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.9.8.7")},
		netip.MustParsePrefix("10.0.2.0/24"),
		[]netip.Addr{netip.MustParseAddr("10.0.2.2"), netip.MustParseAddr("10.0.2.3")},
	)
	cases := map[string]Group{
		// loopback
		"127.0.0.1": Loopback, "127.255.255.254": Loopback, "::1": Loopback, "::ffff:127.0.0.1": Loopback,
		// private
		"10.0.0.1": Private, "10.255.255.255": Private, "172.16.0.1": Private, "172.31.255.255": Private,
		"192.168.0.1": Private, "192.168.255.255": Private, "100.64.0.1": Private, "100.127.255.255": Private,
		"fc00::1": Private, "fdff:ffff::1": Private, "::ffff:10.1.2.3": Private, "64:ff9b::a01:203": Private,
		// not private: just outside the ranges
		"172.15.255.255": Public, "172.32.0.0": Public, "100.63.255.255": Public, "100.128.0.0": Public,
		"11.0.0.0": Public, "192.169.0.0": Public, "fbff::1": Public, "fe00::1": Public,
		// link-local and metadata
		"169.254.0.1": LinkLocal, "169.254.169.253": LinkLocal, "169.254.169.255": LinkLocal, "fe80::1": LinkLocal,
		"febf:ffff::1": LinkLocal, "169.254.169.254": Metadata, "::ffff:169.254.169.254": Metadata,
		"fd00:ec2::254": Metadata, "64:ff9b::a9fe:a9fe": Metadata,
		// multicast
		"224.0.0.1": Multicast, "239.255.255.255": Multicast, "255.255.255.255": Multicast, "ff02::1": Multicast,
		// reserved
		"0.0.0.0": Reserved, "0.1.2.3": Reserved, "240.0.0.1": Reserved, "255.255.255.254": Reserved, "::": Reserved,
		// the guest subnet: netd's own addresses stay private, the rest is reserved
		"10.0.2.2": Private, "10.0.2.3": Private, "10.0.2.15": Reserved, "10.0.2.99": Reserved, "10.0.2.255": Reserved,
		// host: the host's own addresses, whatever range they are in
		"192.0.2.10": Host, "2001:db8::10": Host, "10.9.8.7": Host, "::ffff:192.0.2.10": Host,
		// public, TEST-NET-3 included
		"203.0.113.7": Public, "8.8.8.8": Public, "2606:4700::1111": Public, "192.0.2.11": Public,
	}
	for s, want := range cases {
		if got := c.Classify(netip.MustParseAddr(s)); got != want {
			t.Errorf("Classify(%s) = %s, want %s", s, got, want)
		}
	}
	if got := c.Classify(netip.Addr{}); got != Reserved {
		t.Errorf("Classify(invalid) = %s", got)
	}
}
