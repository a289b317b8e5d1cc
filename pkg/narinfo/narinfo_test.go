package narinfo

import (
	"crypto/ed25519"
	"errors"
	"os"
	"strings"
	"testing"
)

// testdata/*.narinfo and public-key were written by `nix copy --to file://…`
// and `nix key generate-secret` (Nix 2.8).
func readNix(t *testing.T, name string) (*NarInfo, PublicKey) {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	ni, err := ParseBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := os.ReadFile("testdata/public-key")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParsePublicKey(string(pk))
	if err != nil {
		t.Fatal(err)
	}
	return ni, key
}

func TestNixWrittenNarinfoVerifies(t *testing.T) {
	for _, name := range []string{"app.narinfo", "busybox.narinfo"} {
		ni, key := readNix(t, name)
		if err := ni.VerifySignatures([]PublicKey{key}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	ni, _ := readNix(t, "app.narinfo")
	if ni.StorePath.Name() != "app" || len(ni.References) != 1 || ni.Compression != "zstd" || ni.NarSize != 328 {
		t.Errorf("unexpected fields: %+v", ni)
	}
	if ni.Deriver != "ihrrp0c5n0myd8gaq8spywp61b7rc5qn-app.drv" {
		t.Errorf("deriver %q", ni.Deriver)
	}
}

func TestSignatureFailures(t *testing.T) {
	ni, key := readNix(t, "app.narinfo")
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	other := SecretKey{Name: "other-1", Key: otherPriv}

	tampered := *ni
	tampered.NarSize++
	if err := tampered.VerifySignatures([]PublicKey{key}); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("tampered narinfo: %v", err)
	}
	if err := ni.VerifySignatures([]PublicKey{other.Public()}); err == nil || !strings.Contains(err.Error(), "signed by test1, trusted: other-1") {
		t.Errorf("untrusted signer: %v", err)
	}
	unsigned := *ni
	unsigned.Sigs = nil
	if err := unsigned.VerifySignatures([]PublicKey{key}); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Errorf("unsigned: %v", err)
	}
	resigned := *ni
	resigned.Sigs = []string{other.Sign(ni)}
	if err := resigned.VerifySignatures([]PublicKey{other.Public()}); err != nil {
		t.Errorf("our own signature: %v", err)
	}
}

func TestHashEncodings(t *testing.T) {
	want, err := ParseHash("sha256:0bybfdlvzd2j86l3g905kvmhprncccnd2fx40zgfb2859fy8z077")
	if err != nil {
		t.Fatal(err)
	}
	b16 := want.Base16()
	// Nix's base16 decoder takes either case.
	upper := "sha256:" + strings.ToUpper(b16[7:])
	for _, s := range []string{b16, upper, "sha256-" + b64(want), "sha256:" + b64(want)} {
		got, err := ParseHash(s)
		if err != nil || got != want {
			t.Errorf("ParseHash(%q) = %v, %v", s, got, err)
		}
	}
	for _, bad := range []string{
		"md5:0bybfdlvzd2j86l3g905kvmhprncccnd2fx40zgfb2859fy8z077",
		"sha256:0bybfdlvzd2j86l3g905kvmhprncccnd2fx40zgfb2859fy8z07e", // 'e' not in nix32
		"sha256:zbybfdlvzd2j86l3g905kvmhprncccnd2fx40zgfb2859fy8z077", // bits beyond 256
		"sha256:abc",
		"SHA256:" + b16[7:],
	} {
		if _, err := ParseHash(bad); err == nil {
			t.Errorf("ParseHash(%q) accepted", bad)
		}
	}
}

func b64(h Hash) string {
	return strings.TrimPrefix(Hash(h).sri(), "sha256-")
}

func TestParseRules(t *testing.T) {
	base := "StorePath: /nix/store/j9yk9yjc7vcp3w8jk9g5277ydf8435lz-app\nURL: nar/x.nar\nNarHash: sha256:0bybfdlvzd2j86l3g905kvmhprncccnd2fx40zgfb2859fy8z077\nNarSize: 328\n"
	ni, err := ParseBytes([]byte(base + "Deriver: unknown-deriver\nX-Custom: whatever\nReferences: \n"))
	if err != nil {
		t.Fatal(err)
	}
	if ni.Compression != "bzip2" || ni.Deriver != "" || len(ni.References) != 0 {
		t.Errorf("defaults: %+v", ni)
	}
	for name, doc := range map[string]string{
		"missing NarHash":   strings.Replace(base, "NarHash", "Nar-Hash", 1),
		"duplicate URL":     base + "URL: nar/y.nar\n",
		"bad store path":    strings.Replace(base, "/nix/store/", "/gnu/store/", 1),
		"bad reference":     base + "References: ../../etc\n",
		"no separator":      base + "garbage\n",
		"zero NarSize":      strings.Replace(base, "NarSize: 328", "NarSize: 0", 1),
		"negative FileSize": base + "FileSize: -1\n",
	} {
		if _, err := ParseBytes([]byte(doc)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: got %v, want ErrFormat", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"app.narinfo", "busybox.narinfo"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ni, err := ParseBytes(data)
		if err != nil {
			return
		}
		// Whatever parses has a valid store path and a usable fingerprint.
		if _, err := ParseBytes([]byte(ni.StorePath.Absolute())); err == nil {
			t.Fatal("a bare path parsed as a narinfo")
		}
		if !strings.HasPrefix(ni.Fingerprint(), "1;/nix/store/") {
			t.Fatalf("fingerprint %q", ni.Fingerprint())
		}
	})
}

func TestStringRoundTrip(t *testing.T) {
	for _, name := range []string{"app.narinfo", "busybox.narinfo"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		ni, _ := readNix(t, name)
		if ni.String() != string(data) {
			t.Errorf("%s: rendered\n%s\nNix wrote\n%s", name, ni.String(), data)
		}
	}
}
