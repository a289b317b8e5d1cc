package nodeinstall

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The labeler's patch semantics against client-go's object tracker; the
// real API server is exercised by hack/e2e-kind.sh.
func TestKubeNodeLabeler(t *testing.T) {
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1", Labels: map[string]string{"kubernetes.io/os": "linux"}}}
	client := fake.NewClientset(node)
	label := KubeNodeLabeler(client, "w1")

	labels := func() map[string]string {
		n, err := client.CoreV1().Nodes().Get(ctx, "w1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Labels
	}
	if err := label(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := labels(); got[ReadyLabel] != "true" || got["kubernetes.io/os"] != "linux" {
		t.Fatalf("after ready: labels %v", got)
	}
	if err := label(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := labels(); len(got) != 1 || got["kubernetes.io/os"] != "linux" {
		t.Fatalf("after unready: labels %v", got)
	}
	// Repeatable, and a missing node is fine when removing, not when adding.
	if err := label(ctx, false); err != nil {
		t.Fatalf("second removal: %v", err)
	}
	if err := KubeNodeLabeler(client, "gone")(ctx, false); err != nil {
		t.Fatalf("removal on a missing node: %v", err)
	}
	if err := KubeNodeLabeler(client, "gone")(ctx, true); err == nil {
		t.Fatal("labelling a missing node succeeded")
	}
}
