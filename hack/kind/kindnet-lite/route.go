package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// route is a route to another node's pod CIDR.
type route struct {
	dst *net.IPNet
	gw  net.IP
}

// rtprotKindnetLite marks the routes kindnet-lite installs (the protocol
// field of a route is free for daemons to use; `ip route` shows the number).
const rtprotKindnetLite = 0x6b

// replaceRoute installs dst via gw in the main table, replacing any route
// to dst (`ip route replace dst via gw`).
func replaceRoute(dst *net.IPNet, gw net.IP) error {
	return routeRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, dst, gw)
}

// deleteRoute removes the route to dst via gw.
func deleteRoute(dst *net.IPNet, gw net.IP) error {
	return routeRequest(unix.RTM_DELROUTE, 0, dst, gw)
}

// routeRequest sends one rtnetlink route message and waits for its ack.
func routeRequest(typ uint16, flags uint16, dst *net.IPNet, gw net.IP) error {
	family, dstIP, gwIP := unix.AF_INET, dst.IP.To4(), gw.To4()
	if dstIP == nil {
		family, dstIP, gwIP = unix.AF_INET6, dst.IP.To16(), gw.To16()
	}
	if dstIP == nil || gwIP == nil {
		return fmt.Errorf("bad route %s via %s", dst, gw)
	}
	ones, _ := dst.Mask.Size()

	// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
	// type (one byte each), flags (u32).
	body := []byte{
		byte(family), byte(ones), 0, 0,
		unix.RT_TABLE_MAIN, rtprotKindnetLite, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST,
		0, 0, 0, 0,
	}
	body = appendAttr(body, unix.RTA_DST, dstIP)
	body = appendAttr(body, unix.RTA_GATEWAY, gwIP)

	// struct nlmsghdr: len (u32), type (u16), flags (u16), seq, pid (u32).
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:4], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:6], typ)
	binary.NativeEndian.PutUint16(msg[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(msg[8:12], seq)
	msg = append(msg, body...)

	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("netlink: short error message")
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
				return syscall.Errno(-errno)
			}
			return nil
		}
	}
}

// appendAttr appends one rtattr (length, type, value, padding to 4 bytes).
func appendAttr(b []byte, typ uint16, value []byte) []byte {
	l := unix.SizeofRtAttr + len(value)
	a := make([]byte, (l+unix.NLMSG_ALIGNTO-1) & ^(unix.NLMSG_ALIGNTO-1))
	binary.NativeEndian.PutUint16(a[0:2], uint16(l))
	binary.NativeEndian.PutUint16(a[2:4], typ)
	copy(a[unix.SizeofRtAttr:], value)
	return append(b, a...)
}
