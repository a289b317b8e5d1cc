package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"time"

	"github.com/sirupsen/logrus"

	"github.com/storepkg/storepkg/pkg/peer"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The discovery tests run against client-go's fake clientset (list and
// watch through the same informers as on a cluster); the kind e2e
// (hack/e2e-kind.sh) checks the peers file against a real API server.

const testNS = "storepkg-system"

func testNode(name string, ready bool, internalIP, podCIDR string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: internalIP}, {Type: corev1.NodeHostName, Address: name}}}}
	if ready {
		n.Labels[ReadyLabel] = "true"
	}
	return n
}

func testAgentPod(name, node, ip string, ready bool) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: map[string]string{"app.kubernetes.io/name": "storepkg-node"},
			CreationTimestamp: metav1.Now()},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "agent",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9477}, {Name: PeerPortName, ContainerPort: 7421}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

// TestPeerDiscovery: the peers file lists the ready agents on ready nodes,
// follows changes, is 0600, and is removed while this node is not listed.
func TestPeerDiscovery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(
		testNode("node-a", true, "172.30.0.2", "10.244.0.0/24"),
		testNode("node-b", true, "172.30.0.3", "10.244.1.0/24"),
		testNode("node-c", false, "172.30.0.4", "10.244.2.0/24"), // not labelled: never a peer
		testAgentPod("storepkg-node-a", "node-a", "10.244.0.5", true),
		testAgentPod("storepkg-node-b", "node-b", "10.244.1.7", false), // not ready yet
		testAgentPod("storepkg-node-c", "node-c", "10.244.2.9", true),
	)
	// Another namespace's pod with the same labels is no peer.
	other := testAgentPod("impostor", "node-b", "10.244.1.66", true)
	other.Namespace = "default"
	if _, err := client.CoreV1().Pods("default").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "run", "peers", "peers.json")
	const token = "0123456789abcdefghijklmnopqrstuv"
	d, err := newDiscovery(PeersConfig{Client: client, File: file, Self: "node-a", Namespace: testNS, Token: token},
		testLog(t), nopGauge{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); d.run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFile := func(want *peer.File) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			data, err := os.ReadFile(file)
			var got *peer.File
			if err == nil {
				got = &peer.File{}
				if err := json.Unmarshal(data, got); err != nil {
					t.Fatalf("peers file: %v: %s", err, data)
				}
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("peers file\n%+v\nwant\n%+v", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	peerA := peer.Peer{Name: "node-a", URL: "http://10.244.0.5:7421"}
	peerB := peer.Peer{Name: "node-b", URL: "http://10.244.1.7:7421"}
	waitFile(&peer.File{Version: 1, Self: "node-a", Token: token, Peers: []peer.Peer{peerA}})
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("peers file mode %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(file)); di.Mode().Perm() != 0o700 {
		t.Errorf("peers directory mode %v, want 0700", di.Mode().Perm())
	}

	// node-b's agent becomes ready.
	pb := testAgentPod("storepkg-node-b", "node-b", "10.244.1.7", true)
	if _, err := client.CoreV1().Pods(testNS).Update(ctx, pb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(&peer.File{Version: 1, Self: "node-a", Token: token, Peers: []peer.Peer{peerA, peerB}})
	for addr, want := range map[string]bool{
		"10.244.1.7": true, "172.30.0.3": true, "10.244.1.0": true, "::ffff:172.30.0.2": true, // pod, node, pod range
		"10.244.2.9": false, "172.30.0.4": false, "10.244.1.66": true, "10.244.3.1": false, "127.0.0.1": false,
	} {
		if got := d.ClientAllowed(netip.MustParseAddr(addr)); got != want {
			t.Errorf("ClientAllowed(%s) = %v, want %v", addr, got, want)
		}
	}

	// node-b's agent is being deleted (a rollout): not a peer any more.
	now := metav1.Now()
	pb.DeletionTimestamp = &now
	if _, err := client.CoreV1().Pods(testNS).Update(ctx, pb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(&peer.File{Version: 1, Self: "node-a", Token: token, Peers: []peer.Peer{peerA}})

	// This node's label goes (storepkg uninstalled here): no file, so the
	// node's fetches use no peers.
	na := testNode("node-a", false, "172.30.0.2", "10.244.0.0/24")
	if _, err := client.CoreV1().Nodes().Update(ctx, na, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFile(nil)
	if got := d.Peers(); len(got) != 0 {
		t.Errorf("Peers() = %v after the node lost its label", got)
	}
	// Nothing else is left in the directory (no temporary files).
	if entries, _ := os.ReadDir(filepath.Dir(file)); len(entries) != 0 {
		t.Errorf("left in the peers directory: %v", entries)
	}
}

// TestPeerDiscoveryConfig: what is missing or malformed is named.
func TestPeerDiscoveryConfig(t *testing.T) {
	client := fake.NewClientset()
	good := PeersConfig{Client: client, File: "/x/peers.json", Self: "n", Namespace: "ns", Token: "t"}
	for _, c := range []struct {
		edit func(*PeersConfig)
		want string
	}{
		{func(c *PeersConfig) { c.Self = "" }, "no node name"},
		{func(c *PeersConfig) { c.Namespace = "" }, "no namespace"},
		{func(c *PeersConfig) { c.Token = "" }, "no token"},
		{func(c *PeersConfig) { c.PodSelector = "app in (" }, `pod selector "app in ("`},
		{func(c *PeersConfig) { c.NodeSelector = "pool==a==b" }, `node selector "pool==a==b"`},
	} {
		cfg := good
		c.edit(&cfg)
		_, err := newDiscovery(cfg, testLog(t), nopGauge{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want one containing %q", err, c.want)
		}
	}
	d, err := newDiscovery(PeersConfig{Client: client, File: "/x", Self: "n", Namespace: "ns", Token: "t", NodeSelector: "pool=gpu"},
		testLog(t), nopGauge{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.nodes.String(); got != "pool=gpu,storepkg.dev/ready=true" {
		t.Errorf("node selector %q", got)
	}
}

// TestPeerToken: the Secret is created once with a random token; an
// agent that loses the race to create it reads the winner's; a Secret
// without a usable token is named in the error.
func TestPeerToken(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	tok, err := PeerToken(ctx, client, testNS, DefaultPeerTokenSecret)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) < 40 {
		t.Errorf("token %q: too short", tok)
	}
	s, err := client.CoreV1().Secrets(testNS).Get(ctx, DefaultPeerTokenSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != corev1.SecretTypeOpaque || string(s.Data[PeerTokenKey]) != tok {
		t.Errorf("Secret %+v", s)
	}
	again, err := PeerToken(ctx, client, testNS, DefaultPeerTokenSecret)
	if err != nil || again != tok {
		t.Errorf("second agent: %q, %v; want %q", again, err, tok)
	}

	// Lost race: Get says not found, Create says it exists.
	race := fake.NewClientset()
	winner := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: testNS},
		Data: map[string][]byte{PeerTokenKey: []byte("winner-winner-winner-winner\n")}}
	gets := 0
	race.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets++
		if gets == 1 {
			return true, nil, apierrors.NewNotFound(corev1.Resource("secrets"), "s")
		}
		return true, winner, nil
	})
	race.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewAlreadyExists(corev1.Resource("secrets"), "s")
	})
	if got, err := PeerToken(ctx, race, testNS, "s"); err != nil || got != "winner-winner-winner-winner" {
		t.Errorf("after a lost race: %q, %v", got, err)
	}

	bad := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: testNS},
		Data: map[string][]byte{"other": []byte("x")}})
	if _, err := PeerToken(ctx, bad, testNS, "s"); err == nil || !strings.Contains(err.Error(), `Secret storepkg-system/s, key "token": empty`) {
		t.Errorf("Secret without a token: %v", err)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "short"), []byte("abc\n"), 0o600)
	if _, err := ReadPeerToken(filepath.Join(dir, "short")); err == nil || !strings.Contains(err.Error(), "short: 3 characters") {
		t.Errorf("short token file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "ok"), []byte(tok+"\n"), 0o600)
	if got, err := ReadPeerToken(filepath.Join(dir, "ok")); err != nil || got != tok {
		t.Errorf("token file: %q, %v", got, err)
	}
}

type nopGauge struct{}

func (nopGauge) Set(float64) {}

func testLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	return logrus.NewEntry(l)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
