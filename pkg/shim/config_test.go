package shim

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/storepkg/storepkg/pkg/fetch"
)

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestConfigFromContainerdOptions(t *testing.T) {
	body := `
Substituters = ["http://127.0.0.1:5000", "https://cache.nixos.org"]
TrustedPublicKeys = ["test-1:4mM2NTiDBkPaT+Ya0Ym0/qDpfdY+vpFJX5CiVIOKbck="]
StoreRoot = "/var/lib/storepkg"
MaxJobs = 8
BinaryName = "/usr/sbin/runc"
Root = "/run/storepkg-runc"
SystemdCgroup = true
`
	cfg, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(body)}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StoreRoot != "/var/lib/storepkg" || len(cfg.Substituters) != 2 || cfg.MaxJobs != 8 {
		t.Errorf("config: %+v", cfg)
	}
	if _, err := cfg.fetchOptions(); err != nil {
		t.Errorf("fetch options: %v", err)
	}
	// runc gets its own options type, with its keys translated.
	a, err := cfg.runcOptions()
	if err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatal(err)
	}
	ro, ok := v.(*runcoptions.Options)
	if !ok || ro.BinaryName != "/usr/sbin/runc" || ro.Root != "/run/storepkg-runc" || !ro.SystemdCgroup {
		t.Errorf("runc options: %#v", v)
	}

	// The same table from a file (ConfigPath).
	file := filepath.Join(t.TempDir(), "storepkg.toml")
	os.WriteFile(file, []byte(body), 0o644)
	cfg2, err := parseOptions(anyOf(t, &runtimeoptions.Options{ConfigPath: file}))
	if err != nil || cfg2.StoreRoot != cfg.StoreRoot {
		t.Errorf("ConfigPath: %+v, %v", cfg2, err)
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	cfg, err := parseOptions(nil)
	if err != nil || cfg.Substituters[0] != fetch.DefaultSubstituter || cfg.TrustedPublicKeys[0] != fetch.DefaultPublicKey || cfg.StoreRoot != "/" {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	_, err = parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`Substituter = "typo"`)}))
	if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "Substituter") {
		t.Errorf("unknown key: %v", err)
	}
	cfg, _ = parseOptions(anyOf(t, &runtimeoptions.Options{ConfigBody: []byte(`TrustedPublicKeys = ["nocolon"]`)}))
	if _, err := cfg.fetchOptions(); err == nil || !strings.Contains(err.Error(), "TrustedPublicKeys") {
		t.Errorf("bad key: %v", err)
	}
}
