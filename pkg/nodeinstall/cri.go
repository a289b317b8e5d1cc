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
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
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

// Status asks containerd's CRI plugin at socket (a path here) for its status.
// It speaks the CRI protobuf by hand (three fields) rather than pull in the
// Kubernetes CRI API module for one call.
func Status(ctx context.Context, socket string) (*CRIStatus, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	req := protowire.AppendTag(nil, 1, protowire.VarintType) // verbose = true
	req = protowire.AppendVarint(req, 1)
	var resp []byte
	if err := conn.Invoke(ctx, "/runtime.v1.RuntimeService/Status", &req, &resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("containerd at %s answers but its CRI plugin is not running (a config error disables it: see containerd's log): %w", socket, err)
		}
		return nil, fmt.Errorf("CRI status at %s: %w", socket, err)
	}
	return parseStatus(resp)
}

// rawCodec passes protobuf bytes through.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// fields walks a protobuf message, calling f for each length-delimited
// or varint field.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		default:
			l = protowire.ConsumeFieldValue(num, typ, b)
		}
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if err := f(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}

// parseStatus decodes a StatusResponse: status = 1 (RuntimeStatus:
// conditions = 1: type 1, status 2, reason 3, message 4), info = 2
// (map<string,string>), runtime_handlers = 3 (name = 1).
func parseStatus(b []byte) (*CRIStatus, error) {
	st := &CRIStatus{Conditions: map[string]CRICondition{}}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num != 1 || typ != protowire.BytesType {
					return nil
				}
				var name string
				var c CRICondition
				err := fields(v, func(num protowire.Number, _ protowire.Type, v []byte, n uint64) error {
					switch num {
					case 1:
						name = string(v)
					case 2:
						c.Status = n != 0
					case 3:
						c.Reason = string(v)
					case 4:
						c.Message = string(v)
					}
					return nil
				})
				st.Conditions[name] = c
				return err
			})
		case 2:
			var key, val string
			if err := fields(v, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
				switch num {
				case 1:
					key = string(v)
				case 2:
					val = string(v)
				}
				return nil
			}); err != nil {
				return err
			}
			if key == "config" {
				var cfg struct {
					Containerd struct {
						Runtimes map[string]json.RawMessage `json:"runtimes"`
					} `json:"containerd"`
				}
				if json.Unmarshal([]byte(val), &cfg) == nil {
					for name := range cfg.Containerd.Runtimes {
						st.ConfiguredRuntimes = append(st.ConfiguredRuntimes, name)
					}
					sort.Strings(st.ConfiguredRuntimes)
				}
			}
		case 3:
			return fields(v, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
				if num == 1 {
					st.Handlers = append(st.Handlers, string(v))
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("CRI status: %w", err)
	}
	return st, nil
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
		if c, ok := st.Conditions["RuntimeReady"]; !ok || !c.Status {
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
