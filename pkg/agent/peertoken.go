package agent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The peers' shared token (docs/peers.md, "The token").
const (
	// DefaultPeerTokenSecret is the Secret, in the agents' namespace, that
	// holds the token.
	DefaultPeerTokenSecret = "storepkg-peer-token"
	// PeerTokenKey is the Secret's key that holds the token.
	PeerTokenKey = "token"
	// minPeerToken is the shortest token accepted: 128 bits in base64.
	minPeerToken = 22
)

// PeerToken returns the peers' token from the Secret name in namespace,
// creating the Secret with a new random token if it does not exist. Two
// agents that create it at once agree on the one the API server kept.
func PeerToken(ctx context.Context, client kubernetes.Interface, namespace, name string) (string, error) {
	secrets := client.CoreV1().Secrets(namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		var raw [32]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return "", err
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "storepkg"}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{PeerTokenKey: []byte(base64.RawURLEncoding.EncodeToString(raw[:]))},
		}
		s, err = secrets.Create(ctx, s, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			s, err = secrets.Get(ctx, name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return "", fmt.Errorf("peer token: Secret %s/%s: %w", namespace, name, err)
	}
	token, err := checkToken(string(s.Data[PeerTokenKey]))
	if err != nil {
		return "", fmt.Errorf("peer token: Secret %s/%s, key %q: %w", namespace, name, PeerTokenKey, err)
	}
	return token, nil
}

// ReadPeerToken reads the peers' token from a file (one line).
func ReadPeerToken(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("peer token: %w", err)
	}
	token, err := checkToken(string(data))
	if err != nil {
		return "", fmt.Errorf("peer token: %s: %w", file, err)
	}
	return token, nil
}

func checkToken(t string) (string, error) {
	t = strings.TrimSpace(t)
	switch {
	case t == "":
		return "", errors.New("empty")
	case len(t) < minPeerToken:
		return "", fmt.Errorf("%d characters, want at least %d", len(t), minPeerToken)
	case strings.ContainsAny(t, " \t\r\n"):
		return "", errors.New("not one line without spaces (a bearer token)")
	}
	return t, nil
}
