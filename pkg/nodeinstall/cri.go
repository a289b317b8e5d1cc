package nodeinstall

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRIStatus is what containerd's CRI plugin says about itself
// (runtime.v1.RuntimeService/Status, verbose).
type CRIStatus struct {
	Conditions map[string]CRICondition // by type: RuntimeReady, NetworkReady
	// Handlers lists the runtime handlers (CRI 1.30+, containerd 2.x).
	Handlers []string
	// ConfiguredRuntimes lists containerd.runtimes from the verbose
	// "config" info (containerd 1.7 and 2.x).
	ConfiguredRuntimes []string
}

// CRICondition is one runtime condition.
type CRICondition struct {
	Status          bool
	Reason, Message string
}

// HasRuntime reports whether containerd serves the named runtime handler.
func (s *CRIStatus) HasRuntime(name string) bool {
	return slices.Contains(s.Handlers, name) || slices.Contains(s.ConfiguredRuntimes, name)
}

// Status asks containerd's CRI plugin at socket (a path here) for its
// verbose status, through the CRI API's generated client.
func Status(ctx context.Context, socket string) (*CRIStatus, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI status at %s: %w", socket, err)
	}
	defer conn.Close()
	resp, err := runtimeapi.NewRuntimeServiceClient(conn).Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("containerd at %s answers but its CRI plugin is not running (a config error disables it: see containerd's log): %w", socket, err)
		}
		return nil, fmt.Errorf("CRI status at %s: %w", socket, err)
	}
	return statusOf(resp), nil
}

// statusOf takes from a StatusResponse the runtime conditions, the named
// runtime handlers and the runtimes named in containerd's verbose
// "config" info (JSON; ignored when it does not parse).
func statusOf(resp *runtimeapi.StatusResponse) *CRIStatus {
	st := &CRIStatus{Conditions: map[string]CRICondition{}}
	for _, c := range resp.GetStatus().GetConditions() {
		st.Conditions[c.GetType()] = CRICondition{Status: c.GetStatus(), Reason: c.GetReason(), Message: c.GetMessage()}
	}
	for _, h := range resp.GetRuntimeHandlers() {
		// containerd repeats its default runtime's handler under the
		// empty name; only named handlers are runtimes a pod can ask for.
		if h.GetName() != "" {
			st.Handlers = append(st.Handlers, h.GetName())
		}
	}
	if cfgJSON, ok := resp.GetInfo()["config"]; ok {
		var cfg struct {
			Containerd struct {
				Runtimes map[string]json.RawMessage `json:"runtimes"`
			} `json:"containerd"`
		}
		if json.Unmarshal([]byte(cfgJSON), &cfg) == nil {
			for name := range cfg.Containerd.Runtimes {
				st.ConfiguredRuntimes = append(st.ConfiguredRuntimes, name)
			}
			sort.Strings(st.ConfiguredRuntimes)
		}
	}
	return st
}

// ReadyProbe returns nil once the storepkg runtime answers on the node.
type ReadyProbe func(ctx context.Context) error

// CRIProbe is the default ReadyProbe: containerd's CRI plugin at socket (a
// path here) answers, reports RuntimeReady, and serves the runtime handler.
func CRIProbe(socket, handler string) ReadyProbe {
	return func(ctx context.Context) error {
		st, err := Status(ctx, socket)
		if err != nil {
			return err
		}
		if c, ok := st.Conditions[runtimeapi.RuntimeReady]; !ok || !c.Status {
			return fmt.Errorf("containerd at %s: CRI runtime not ready: %s %s", socket, c.Reason, c.Message)
		}
		if !st.HasRuntime(handler) {
			known := st.Handlers
			if len(known) == 0 {
				known = st.ConfiguredRuntimes
			}
			return fmt.Errorf("containerd at %s serves runtimes %s but not %q: it has not loaded the new config (was it restarted? see its log)",
				socket, strings.Join(known, ", "), handler)
		}
		return nil
	}
}

// errNotReady wraps the last probe error when waiting times out.
var errNotReady = errors.New("the storepkg runtime did not answer")
