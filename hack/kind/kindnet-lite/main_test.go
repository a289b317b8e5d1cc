package main

import (
	"encoding/binary"
	"encoding/json"
	"reflect"
	"testing"
)

func TestCNIConfig(t *testing.T) {
	cidrs, err := parseCIDRs("10.244.1.0/24, fd00:10:244:1::/64")
	if err != nil {
		t.Fatal(err)
	}
	b, err := cniConfig(cidrs, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type   string `json:"type"`
			IPMasq bool   `json:"ipMasq"`
			MTU    int    `json:"mtu"`
			IPAM   struct {
				Type   string                `json:"type"`
				Routes []map[string]string   `json:"routes"`
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
			Capabilities map[string]bool `json:"capabilities"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "ptp" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("plugins: %s", b)
	}
	ptp := conf.Plugins[0]
	if ptp.IPMasq || ptp.MTU != 1400 || ptp.IPAM.Type != "host-local" {
		t.Errorf("ptp: %s", b)
	}
	wantRanges := [][]map[string]string{{{"subnet": "10.244.1.0/24"}}, {{"subnet": "fd00:10:244:1::/64"}}}
	if !reflect.DeepEqual(ptp.IPAM.Ranges, wantRanges) {
		t.Errorf("ranges = %v, want %v", ptp.IPAM.Ranges, wantRanges)
	}
	wantRoutes := []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}}
	if !reflect.DeepEqual(ptp.IPAM.Routes, wantRoutes) {
		t.Errorf("routes = %v, want %v", ptp.IPAM.Routes, wantRoutes)
	}
	if !conf.Plugins[1].Capabilities["portMappings"] {
		t.Errorf("portmap without portMappings: %s", b)
	}
}

func TestParseCIDRs(t *testing.T) {
	got, err := parseCIDRs(" 10.244.0.0/16 ,,")
	if err != nil || len(got) != 1 || got[0].String() != "10.244.0.0/16" {
		t.Errorf("parseCIDRs = %v, %v", got, err)
	}
	if _, err := parseCIDRs("10.244.0.0"); err == nil {
		t.Error("parseCIDRs accepted an address without a prefix length")
	}
	if got, err := parseCIDRs(""); err != nil || len(got) != 0 {
		t.Errorf("parseCIDRs(\"\") = %v, %v", got, err)
	}
}

func TestAppendAttr(t *testing.T) {
	// rtattr: u16 length (header + value, unpadded), u16 type, value,
	// padding to 4 bytes.
	got := appendAttr([]byte{0xff}, 5, []byte{10, 0, 1})
	if len(got) != 1+8 || got[0] != 0xff {
		t.Fatalf("appendAttr = %v: want 1 byte kept and 8 appended", got)
	}
	a := got[1:]
	if l, typ := binary.NativeEndian.Uint16(a[0:2]), binary.NativeEndian.Uint16(a[2:4]); l != 7 || typ != 5 {
		t.Errorf("length, type = %d, %d, want 7, 5", l, typ)
	}
	if !reflect.DeepEqual(a[4:], []byte{10, 0, 1, 0}) {
		t.Errorf("value = %v, want [10 0 1 0]", a[4:])
	}
}
