package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/storepkg/storepkg/pkg/peer"
)

// Peer discovery: the agent lists the other nodes' agents through the
// API server and writes them to the peers file, which every fetch child
// on the node reads (docs/peers.md).

// Defaults of peer discovery.
const (
	// ReadyLabel is the label `storepkg node install` sets on a node whose
	// runtime answers: only such nodes are peers.
	ReadyLabel = "storepkg.dev/ready"
	// DefaultPeerPodSelector selects the agents' pods in their namespace.
	DefaultPeerPodSelector = "app.kubernetes.io/name=storepkg-node"
	// DefaultPeerPort is the peer listener's port when the agent's pod
	// names no container port "peer".
	DefaultPeerPort = 7420
	// PeerPortName is the name of the agent container's peer port.
	PeerPortName = "peer"
)

// peerResync bounds how long a missed notification could leave the file
// stale (the informers also relist on their own).
const peerResync = 30 * time.Second

// PeersConfig configures peer discovery.
type PeersConfig struct {
	// Client reaches the API server with the agent's service account.
	Client kubernetes.Interface
	// File is the peers file; it is written atomically, mode 0600.
	File string
	// Self is this node's name.
	Self string
	// Namespace is where the agents' pods run (the agent's own).
	Namespace string
	// PodSelector selects the agents' pods; default DefaultPeerPodSelector.
	PodSelector string
	// NodeSelector narrows the peers to nodes that also match it (they
	// must carry storepkg.dev/ready=true in any case).
	NodeSelector string
	// Token is the bearer token peers present to each other.
	Token string
}

func (c *PeersConfig) validate() (pods, nodes labels.Selector, err error) {
	switch {
	case c.Client == nil:
		return nil, nil, errors.New("peers: no Kubernetes client")
	case c.File == "":
		return nil, nil, errors.New("peers: no peers file")
	case c.Self == "":
		return nil, nil, errors.New("peers: no node name (--node-name or $NODE_NAME)")
	case c.Namespace == "":
		return nil, nil, errors.New("peers: no namespace (--namespace or $POD_NAMESPACE)")
	case c.Token == "":
		return nil, nil, errors.New("peers: no token")
	}
	if c.PodSelector == "" {
		c.PodSelector = DefaultPeerPodSelector
	}
	if pods, err = labels.Parse(c.PodSelector); err != nil {
		return nil, nil, fmt.Errorf("peers: pod selector %q: %w", c.PodSelector, err)
	}
	sel := ReadyLabel + "=true"
	if c.NodeSelector != "" {
		sel += "," + c.NodeSelector
	}
	if nodes, err = labels.Parse(sel); err != nil {
		return nil, nil, fmt.Errorf("peers: node selector %q: %w", c.NodeSelector, err)
	}
	return pods, nodes, nil
}

// discovery keeps the peers file in step with the API server.
type discovery struct {
	cfg   PeersConfig
	log   *logrus.Entry
	gauge interface{ Set(float64) }

	pods  labels.Selector
	nodes labels.Selector

	kick chan struct{}

	mu      sync.Mutex
	peers   []peer.Peer
	clients []netip.Prefix // addresses the listed peers' fetches come from
	written []byte         // the file's content as last written; nil: no file
}

func newDiscovery(cfg PeersConfig, log *logrus.Entry, gauge interface{ Set(float64) }) (*discovery, error) {
	pods, nodes, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &discovery{cfg: cfg, log: log.WithField("peersFile", cfg.File), gauge: gauge,
		pods: pods, nodes: nodes, kick: make(chan struct{}, 1)}, nil
}

// run watches the agents' pods and the ready nodes until ctx ends. The
// file is rewritten whenever the list changes; it stays when the agent
// stops (its last list is the best guess a fetch has, and peers are
// checked anyway).
func (d *discovery) run(ctx context.Context) {
	podFactory := informers.NewSharedInformerFactoryWithOptions(d.cfg.Client, peerResync,
		informers.WithNamespace(d.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = d.pods.String() }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(d.cfg.Client, peerResync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = d.nodes.String() }))
	podInformer := podFactory.Core().V1().Pods()
	nodeInformer := nodeFactory.Core().V1().Nodes()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { d.notify() },
		UpdateFunc: func(any, any) { d.notify() },
		DeleteFunc: func(any) { d.notify() },
	}
	if _, err := podInformer.Informer().AddEventHandler(handler); err != nil {
		d.log.WithError(err).Error("peer discovery: watching pods")
		return
	}
	if _, err := nodeInformer.Informer().AddEventHandler(handler); err != nil {
		d.log.WithError(err).Error("peer discovery: watching nodes")
		return
	}
	podFactory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	defer podFactory.Shutdown()
	defer nodeFactory.Shutdown()
	d.log.WithFields(logrus.Fields{"namespace": d.cfg.Namespace, "pods": d.pods.String(), "nodes": d.nodes.String()}).
		Info("discovering peers")
	for _, ok := range podFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return
		}
	}
	for _, ok := range nodeFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return
		}
	}
	t := time.NewTicker(peerResync)
	defer t.Stop()
	for {
		d.update(podInformer.Lister(), nodeInformer.Lister())
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
			// Let a burst of changes (a rollout) settle into one write.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		case <-t.C:
		}
	}
}

func (d *discovery) notify() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// update lists the peers and writes the file if the list changed.
func (d *discovery) update(pods corelisters.PodLister, nodes corelisters.NodeLister) {
	podList, err := pods.Pods(d.cfg.Namespace).List(d.pods)
	if err != nil {
		d.log.WithError(err).Warn("peer discovery: listing pods")
		return
	}
	nodeList, err := nodes.List(d.nodes)
	if err != nil {
		d.log.WithError(err).Warn("peer discovery: listing nodes")
		return
	}
	peers, clients := listPeers(podList, nodeList)
	d.mu.Lock()
	d.peers, d.clients = peers, clients
	d.mu.Unlock()
	d.gauge.Set(float64(len(peers)))
	if err := d.write(peers); err != nil {
		d.log.WithError(err).Warn("peer discovery: writing the peers file")
	}
}

// write writes the file for peers, or removes it when this node is not
// among them (its agent is not ready yet, or its node not labelled): a
// fetch then goes upstream alone, as without peers.
func (d *discovery) write(peers []peer.Peer) error {
	selfListed := slices.ContainsFunc(peers, func(p peer.Peer) bool { return p.Name == d.cfg.Self })
	var data []byte
	if selfListed {
		var err error
		data, err = json.Marshal(peer.File{Version: peer.FileVersion, Self: d.cfg.Self, Token: d.cfg.Token, Peers: peers})
		if err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if bytes.Equal(data, d.written) && (data != nil) == (d.written != nil) {
		return nil
	}
	names := make([]string, len(peers))
	for i, p := range peers {
		names[i] = p.Name
	}
	if data == nil {
		if err := os.Remove(d.cfg.File); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		d.written = nil
		d.log.WithField("peers", names).Info("this node is not among the peers (agent not ready or node not labelled): no peers file")
		return nil
	}
	if err := writeFileAtomic(d.cfg.File, data); err != nil {
		return err
	}
	d.written = data
	d.log.WithField("peers", names).Info("wrote the peers file")
	return nil
}

// Peers returns the peers of the last listing (the peer listener's
// view; nil before the first).
func (d *discovery) Peers() []peer.Peer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.peers)
}

// ClientAllowed reports whether a request from addr can come from a
// listed peer: from its agent's pod IP, its node's addresses, or its
// node's pod CIDRs. The fetch child runs in the host's network namespace,
// so its requests come from the address the host routes pod traffic
// from: the node's InternalIP (routed pod networks such as kindnet, cloud
// VPCs) or an address of the node's pod range (overlays that give the
// host an interface there: flannel, Cilium).
func (d *discovery) ClientAllowed(addr netip.Addr) bool {
	addr = addr.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.clients {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// listPeers turns the agents' pods and the ready nodes into the sorted
// peer list, and the client prefixes of those peers. A peer is a node that
// matched the node selector, with a running, ready, not terminating agent
// pod that has an IP; of two such pods on one node (a rollout), the newer.
func listPeers(pods []*corev1.Pod, nodes []*corev1.Node) ([]peer.Peer, []netip.Prefix) {
	ready := make(map[string]*corev1.Node, len(nodes))
	for _, n := range nodes {
		ready[n.Name] = n
	}
	chosen := map[string]*corev1.Pod{}
	for _, p := range pods {
		if ready[p.Spec.NodeName] == nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !podReady(p) {
			continue
		}
		if _, err := netip.ParseAddr(p.Status.PodIP); err != nil {
			continue
		}
		if old := chosen[p.Spec.NodeName]; old == nil || old.CreationTimestamp.Before(&p.CreationTimestamp) {
			chosen[p.Spec.NodeName] = p
		}
	}
	var peers []peer.Peer
	var clients []netip.Prefix
	for node, p := range chosen {
		ip := netip.MustParseAddr(p.Status.PodIP)
		peers = append(peers, peer.Peer{Name: node, URL: "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(peerPort(p)))})
		clients = append(clients, netip.PrefixFrom(ip, ip.BitLen()))
		n := ready[node]
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				clients = append(clients, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if pfx, err := netip.ParsePrefix(c); err == nil {
				clients = append(clients, pfx.Masked())
			}
		}
	}
	slices.SortFunc(peers, func(a, b peer.Peer) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return peers, clients
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// peerPort is the agent container's port named "peer", so the listener's
// port is said once, in the DaemonSet.
func peerPort(p *corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == PeerPortName && port.ContainerPort > 0 {
				return int(port.ContainerPort)
			}
		}
	}
	return DefaultPeerPort
}

// writeFileAtomic replaces file with data, mode 0600, creating its
// directory (0700): the file holds the peers' token.
func writeFileAtomic(file string, data []byte) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// RemovePeersFile removes a peers file left from when sharing was on, so
// that the node's fetches stop using peers.
func RemovePeersFile(file string) error {
	if file == "" {
		return nil
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the peers file: %w", err)
	}
	return nil
}
