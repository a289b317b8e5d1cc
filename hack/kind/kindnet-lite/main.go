// Command kindnet-lite is the pod network of the kind clusters hack/kind
// builds offline, in place of kind's kindnetd (whose image cannot be
// pulled, nor its module fetched from the module proxy). It runs on every
// node as a hostNetwork DaemonSet (manifest.yaml) and does what kindnetd
// does for a single-family or dual-stack cluster, without network policies:
//
//   - writes the node's CNI configuration, ptp + host-local + portmap, with
//     the node's pod CIDRs (kubeadm's node IPAM gives each node its own);
//   - routes every other node's pod CIDRs via that node's InternalIP, so
//     pods reach each other across nodes (all nodes share one L2 network);
//   - masquerades traffic from pods to anything outside the cluster's pod
//     subnets (POD_SUBNET), so pods can reach the host and other networks.
//
// Environment: NODE_NAME (the node it runs on), POD_SUBNET (the cluster's
// pod subnets, comma separated; kind fills it in) and CONTROL_PLANE_ENDPOINT
// (host:port of the API server; kind adds it, so kindnet-lite does not
// depend on kube-proxy having programmed the kubernetes Service yet).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// cniConfigPath is where kindnetd writes its configuration too; containerd
// picks up the first file of /etc/cni/net.d.
const cniConfigPath = "/etc/cni/net.d/10-kindnet.conflist"

// resyncInterval bounds how long a route someone deleted stays missing.
const resyncInterval = 30 * time.Second

func main() {
	log.SetFlags(log.LstdFlags | log.Lmsgprefix)
	log.SetPrefix("kindnet-lite: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	nodeName := os.Getenv("NODE_NAME")
	if nodeName == "" {
		return errors.New("NODE_NAME is not set")
	}
	podSubnets, err := parseCIDRs(os.Getenv("POD_SUBNET"))
	if err != nil {
		return fmt.Errorf("POD_SUBNET: %w", err)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	if ep := os.Getenv("CONTROL_PLANE_ENDPOINT"); ep != "" {
		cfg.Host = "https://" + ep
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Printf("node %s, cluster pod subnets %v", nodeName, podSubnets)

	// List, reconcile, then reconcile again on every node event. The watch
	// ends after resyncInterval, and the next list repairs anything that
	// was changed behind our back. Clusters are small: every reconcile
	// looks at every node.
	r := &reconciler{nodeName: nodeName, podSubnets: podSubnets, routes: map[string]route{}}
	api := client.CoreV1().Nodes()
	for ctx.Err() == nil {
		list, err := api.List(ctx, metav1.ListOptions{})
		if err != nil {
			log.Printf("list nodes: %v", err)
			sleep(ctx, 2*time.Second)
			continue
		}
		nodes := map[string]*corev1.Node{}
		for i := range list.Items {
			nodes[list.Items[i].Name] = &list.Items[i]
		}
		r.reconcileAndLog(nodes, true)

		timeout := int64(resyncInterval / time.Second)
		w, err := api.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion, TimeoutSeconds: &timeout})
		if err != nil {
			log.Printf("watch nodes: %v", err)
			sleep(ctx, 2*time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok {
				break // an error event: list again
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				nodes[n.Name] = n
			case watch.Deleted:
				delete(nodes, n.Name)
			}
			r.reconcileAndLog(nodes, false)
		}
		w.Stop()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

type reconciler struct {
	nodeName   string
	podSubnets []*net.IPNet

	cniConfig []byte           // last written, to write only on change
	routes    map[string]route // routes we installed, by destination
	masqDone  bool
}

func (r *reconciler) reconcileAndLog(nodes map[string]*corev1.Node, full bool) {
	if err := r.reconcile(nodes, full); err != nil {
		log.Print(err)
	}
}

// reconcile brings this node's CNI config and routes in line with the
// nodes, and with full the masquerade rules too (they depend only on the
// cluster's pod subnets: checking them at every resync is enough).
func (r *reconciler) reconcile(all map[string]*corev1.Node, full bool) error {
	var errs []error
	want := map[string]route{}
	for _, n := range all {
		cidrs, err := parseCIDRs(strings.Join(n.Spec.PodCIDRs, ","))
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: pod CIDRs: %w", n.Name, err))
			continue
		}
		if n.Name == r.nodeName {
			if len(cidrs) > 0 {
				errs = append(errs, r.writeCNIConfig(cidrs))
			}
			continue
		}
		for _, c := range cidrs {
			gw := internalIP(n, c.IP.To4() != nil)
			if gw == nil {
				continue
			}
			want[c.String()] = route{dst: c, gw: gw}
		}
	}
	for key, rt := range want {
		// Replacing an unchanged route is cheap, and puts back one that
		// was deleted behind our back.
		if err := replaceRoute(rt.dst, rt.gw); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", rt.dst, rt.gw, err))
			continue
		}
		if _, ok := r.routes[key]; !ok {
			log.Printf("route %s via %s", rt.dst, rt.gw)
		}
		r.routes[key] = rt
	}
	for key, rt := range r.routes {
		if _, ok := want[key]; ok {
			continue
		}
		if err := deleteRoute(rt.dst, rt.gw); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s via %s: %w", rt.dst, rt.gw, err))
			continue
		}
		log.Printf("deleted route %s via %s", rt.dst, rt.gw)
		delete(r.routes, key)
	}
	if full {
		errs = append(errs, r.ensureMasquerade())
	}
	return errors.Join(errs...)
}

func (r *reconciler) ensureMasquerade() error {
	if err := ensureMasquerade(r.podSubnets); err != nil {
		return fmt.Errorf("masquerade: %w", err)
	}
	if !r.masqDone {
		log.Printf("masquerading pod traffic leaving %v", r.podSubnets)
		r.masqDone = true
	}
	return nil
}

// writeCNIConfig writes the ptp conflist for this node's pod CIDRs,
// atomically, when it changed.
func (r *reconciler) writeCNIConfig(cidrs []*net.IPNet) error {
	conf, err := cniConfig(cidrs, hostMTU())
	if err != nil {
		return err
	}
	if reflect.DeepEqual(conf, r.cniConfig) {
		return nil
	}
	if cur, err := os.ReadFile(cniConfigPath); err == nil && reflect.DeepEqual(cur, conf) {
		r.cniConfig = conf
		return nil
	}
	tmp := filepath.Join(filepath.Dir(cniConfigPath), ".kindnet-lite.tmp")
	if err := os.WriteFile(tmp, conf, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, cniConfigPath); err != nil {
		return err
	}
	r.cniConfig = conf
	log.Printf("wrote %s for %v", cniConfigPath, cidrs)
	return nil
}

// cniConfig is the conflist: a veth pair per pod (ptp) with addresses from
// the node's pod CIDRs (host-local), plus hostPort support (portmap).
func cniConfig(cidrs []*net.IPNet, mtu int) ([]byte, error) {
	type rng struct {
		Subnet string `json:"subnet"`
	}
	type rt struct {
		Dst string `json:"dst"`
	}
	var ranges [][]rng
	var routes []rt
	for _, c := range cidrs {
		ranges = append(ranges, []rng{{Subnet: c.String()}})
		if c.IP.To4() != nil {
			routes = append(routes, rt{Dst: "0.0.0.0/0"})
		} else {
			routes = append(routes, rt{Dst: "::/0"})
		}
	}
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "kindnet",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false, // kindnet-lite masquerades, cluster-wide
				"mtu":    mtu,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": "/run/cni-ipam-state",
					"routes":  routes,
					"ranges":  ranges,
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// hostMTU is the MTU of eth0, the node's interface on the kind network,
// else 1500.
func hostMTU() int {
	ifaces, err := net.Interfaces()
	if err != nil {
		return 1500
	}
	for _, i := range ifaces {
		if i.Name == "eth0" && i.MTU > 0 {
			return i.MTU
		}
	}
	return 1500
}

func internalIP(n *corev1.Node, v4 bool) net.IP {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip := net.ParseIP(a.Address)
		if ip != nil && (ip.To4() != nil) == v4 {
			return ip
		}
	}
	return nil
}

func parseCIDRs(s string) ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		_, c, err := net.ParseCIDR(f)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
