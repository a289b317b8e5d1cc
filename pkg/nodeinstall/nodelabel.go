package nodeinstall

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// KubeNodeLabeler labels node through the Kubernetes API: ready sets
// ReadyLabel=true, !ready removes it. A merge patch touches only that
// label, so it never races with kubelet or other controllers updating the
// node. Removing a label that is not there, or from a node that is gone,
// is not an error (uninstall must be repeatable).
func KubeNodeLabeler(client kubernetes.Interface, node string) NodeLabeler {
	return func(ctx context.Context, ready bool) error {
		var value any // JSON null removes the key in a merge patch
		if ready {
			value = "true"
		}
		patch, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"labels": map[string]any{ReadyLabel: value}},
		})
		if err != nil {
			return err
		}
		_, err = client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "storepkg"})
		if err != nil && !ready && apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", node, err)
		}
		return nil
	}
}
