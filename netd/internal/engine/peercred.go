package engine

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// PeerCheck decides whether the process at the other end of the frame
// socket may be the VMM.
type PeerCheck func(pid int32, uid uint32) error

// VMMPeer is PROTOCOL.md's check: the same uid as netd, and the peer is
// netd's parent (the libkrun runner is the VMM) or a child of netd's parent
// (qemu, started by the runner).
func VMMPeer(pid int32, uid uint32) error {
	if uid != uint32(os.Getuid()) {
		return fmt.Errorf("peer uid %d is not netd's uid %d", uid, os.Getuid())
	}
	parent := int32(os.Getppid())
	if pid == parent {
		return nil
	}
	if pp, err := parentOf(pid); err == nil && pp == parent {
		return nil
	}
	return fmt.Errorf("peer pid %d is neither netd's parent (%d) nor a child of it", pid, parent)
}

// parentOf reads a process's parent pid from /proc/PID/stat (the field after
// the parenthesised command, which may itself hold spaces and parentheses).
func parentOf(pid int32) (int32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unreadable /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("unreadable /proc/%d/stat", pid)
	}
	pp, err := strconv.ParseInt(fields[1], 10, 32)
	return int32(pp), err
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}
