package main

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/storepkg/storepkg/pkg/agent"
	"github.com/storepkg/storepkg/pkg/peer"
)

// inClusterNamespace is where kubelet puts the pod's namespace next to its
// service account token.
const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// peerFlags are the agent's peer discovery flags.
type peerFlags struct {
	sharing      bool
	file         string
	namespace    string
	podSelector  string
	nodeSelector string
	tokenFile    string
	tokenSecret  string
}

func (p *peerFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&p.sharing, "peer-sharing", true, "share closures with the other nodes' agents (false: remove the peers file, discover nothing)")
	f.StringVar(&p.file, "peers-file", peer.DefaultFile, "`FILE` to write the discovered peers to, for the node's fetches (empty: discover nothing)")
	f.StringVar(&p.namespace, "namespace", "", "namespace of the agents' pods and of the token's Secret (default $POD_NAMESPACE, else the service account's)")
	f.StringVar(&p.podSelector, "peer-pod-selector", agent.DefaultPeerPodSelector, "label `SELECTOR` of the agents' pods")
	f.StringVar(&p.nodeSelector, "peer-node-selector", "", "label `SELECTOR` nodes must also match to be peers (besides storepkg.dev/ready=true)")
	f.StringVar(&p.tokenFile, "peer-token-file", "", "read the peers' bearer token from `FILE` instead of the Secret")
	f.StringVar(&p.tokenSecret, "peer-token-secret", agent.DefaultPeerTokenSecret, "Secret in --namespace holding the peers' token (key \"token\"), created if missing")
}

// config returns the discovery's configuration, or nil when sharing is
// off or there is no cluster to discover peers in. Only turning sharing
// off removes a peers file: an agent run by hand outside the cluster
// leaves the node's file alone.
func (p *peerFlags) config(ctx context.Context, log *logrus.Entry, node string) (*agent.PeersConfig, error) {
	if !p.sharing {
		log.Info("peer sharing off (--peer-sharing=false)")
		return nil, agent.RemovePeersFile(p.file)
	}
	if p.file == "" {
		log.Info("no peer discovery (--peers-file is empty)")
		return nil, nil
	}
	if node == "" {
		log.Info("no peer discovery (no node name: --node-name or $NODE_NAME)")
		return nil, nil
	}
	client, err := kubeClient("")
	if err != nil {
		log.WithError(err).Info("no peer discovery (no cluster)")
		return nil, nil
	}
	ns := p.namespace
	if ns == "" {
		ns = os.Getenv("POD_NAMESPACE")
	}
	if ns == "" {
		b, err := os.ReadFile(inClusterNamespace)
		if err != nil {
			return nil, errors.New("--namespace: not given, no $POD_NAMESPACE, and no service account namespace file")
		}
		ns = strings.TrimSpace(string(b))
	}
	var token string
	if p.tokenFile != "" {
		token, err = agent.ReadPeerToken(p.tokenFile)
	} else {
		token, err = agent.PeerToken(ctx, client, ns, p.tokenSecret)
	}
	if err != nil {
		return nil, err
	}
	return &agent.PeersConfig{Client: client, File: p.file, Self: node, Namespace: ns,
		PodSelector: p.podSelector, NodeSelector: p.nodeSelector, Token: token}, nil
}

// token is the bearer token the peer server requires: discovery's, or,
// without discovery (an agent run by hand, a node outside a cluster), the
// one in --peer-token-file; "" serves nothing.
func (p *peerFlags) token(d *agent.PeersConfig) (string, error) {
	switch {
	case !p.sharing:
		return "", nil
	case d != nil:
		return d.Token, nil
	case p.tokenFile != "":
		return agent.ReadPeerToken(p.tokenFile)
	}
	return "", nil
}

// apply sets cfg's peers and token: from the peers file static names
// (--peers-static), else from discovery; with sharing off, neither.
func (p *peerFlags) apply(ctx context.Context, log *logrus.Entry, node, static string, cfg *agent.Config) error {
	var err error
	if static != "" && p.sharing {
		if cfg.PeerToken, err = p.token(nil); err != nil {
			return err
		}
		return staticPeers(cfg, static)
	}
	if cfg.Discovery, err = p.config(ctx, log, node); err != nil {
		return err
	}
	cfg.PeerToken, err = p.token(cfg.Discovery)
	return err
}
