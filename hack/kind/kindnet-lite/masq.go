package main

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
)

// masqChain is the nat chain holding the masquerade rules.
const masqChain = "KINDNET-LITE-MASQ"

// ensureMasquerade makes the node masquerade traffic from the cluster's
// pod subnets to anywhere else, per address family, like kindnetd does:
//
//	POSTROUTING -s <pod subnet> -m addrtype ! --dst-type LOCAL -j KINDNET-LITE-MASQ
//	KINDNET-LITE-MASQ -d <each pod subnet> -j RETURN
//	KINDNET-LITE-MASQ -j MASQUERADE
//
// The chain is rewritten as a whole with iptables-restore --noflush (one
// transaction); the jumps are added once.
func ensureMasquerade(podSubnets []*net.IPNet) error {
	for _, v4 := range []bool{true, false} {
		var subnets []*net.IPNet
		for _, s := range podSubnets {
			if (s.IP.To4() != nil) == v4 {
				subnets = append(subnets, s)
			}
		}
		if len(subnets) == 0 {
			continue
		}
		cmd := "iptables"
		if !v4 {
			cmd = "ip6tables"
		}
		var rules strings.Builder
		fmt.Fprintf(&rules, "*nat\n:%s - [0:0]\n", masqChain)
		for _, s := range subnets {
			fmt.Fprintf(&rules, "-A %s -d %s -j RETURN\n", masqChain, s)
		}
		fmt.Fprintf(&rules, "-A %s -j MASQUERADE\nCOMMIT\n", masqChain)
		if err := runIPTables(cmd+"-restore", strings.NewReader(rules.String()), "--noflush"); err != nil {
			return err
		}
		for _, s := range subnets {
			jump := func(op string) []string {
				return []string{"-t", "nat", op, "POSTROUTING", "-s", s.String(),
					"-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", masqChain}
			}
			if runIPTables(cmd, nil, jump("-C")...) == nil {
				continue
			}
			if err := runIPTables(cmd, nil, jump("-A")...); err != nil {
				return err
			}
		}
	}
	return nil
}

func runIPTables(name string, stdin *strings.Reader, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
