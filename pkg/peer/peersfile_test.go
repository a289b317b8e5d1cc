package peer_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/storepkg/storepkg/pkg/peer"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "peers.json")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestLoadFile(t *testing.T) {
	pf, err := peer.LoadFile(filepath.Join(t.TempDir(), "absent.json"))
	if pf != nil || err != nil {
		t.Fatalf("missing file: %v, %v; want no peers and no error", pf, err)
	}
	good := `{"version":1,"self":"node-a","token":"s3cret","peers":[
	  {"name":"node-a","url":"http://10.244.1.3:7420"},{"name":"node-b","url":"http://10.244.2.4:7420"}]}`
	pf, err = peer.LoadFile(writeFile(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if pf.Self != "node-a" || pf.Token != "s3cret" || len(pf.Peers) != 2 || pf.Peers[1] != (peer.Peer{Name: "node-b", URL: "http://10.244.2.4:7420"}) {
		t.Errorf("loaded %+v", pf)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"version":2,"self":"a","token":"t","peers":[{"name":"a","url":"http://h:1"}]}`, "version 2"},
		{`{"version":1,"self":"a","peers":[{"name":"a","url":"http://h:1"}]}`, "token: empty"},
		{`{"version":1,"self":"c","token":"t","peers":[{"name":"a","url":"http://h:1"}]}`, `self "c" is not one of the peers`},
		{`{"version":1,"self":"a","token":"t","peers":[{"name":"a","url":"http://h:1"},{"name":"a","url":"http://h:2"}]}`, `peers[1]: name "a" listed twice`},
		{`{"version":1,"self":"a","token":"t","peers":[{"name":"a","url":"ftp://h:1"}]}`, `peers[0] (a): url "ftp://h:1"`},
		{`{"version":1,"self":"a","token":"t","peers":[{"name":"a","url":"http://u:p@h:1"}]}`, `peers[0] (a): url`},
		{`{"version":1,"self":"a","token":"t","peers":[{"name":"","url":"http://h:1"}]}`, `peers[0]: name: empty`},
		{`{"version":1,"self":"a","token":"t","peers":[{"name":"a","url":"http://h:1"}],"extra":1}`, `unknown field "extra"`},
		{`{"version":1,`, "unexpected EOF"},
	} {
		file := writeFile(t, tc.body)
		pf, err := peer.LoadFile(file)
		if err == nil || pf != nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: %v, %v; want an error naming the file and %q", tc.body, pf, err, tc.want)
		}
	}
	if _, err := peer.LoadFile(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
}
