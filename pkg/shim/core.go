// Package shim is the task service of containerd-shim-storepkg-v1: it wraps
// runc's task service from containerd, so process management, io, exec,
// pty, OOM events and cgroups are containerd's tested code, and adds what
// storepkg does on create, exec and delete. plugin.go registers it;
// task_v3.go and task_v2.go speak the two task APIs (containerd 2.x, 1.7)
// over service.go; everything else here is version-neutral.
package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/storepkg/storepkg/pkg/fetchapi"
	"github.com/storepkg/storepkg/pkg/fetchexec"
	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/mount"
	"github.com/storepkg/storepkg/pkg/procid"
	"github.com/storepkg/storepkg/pkg/store/views"
	"github.com/storepkg/storepkg/pkg/storepath"
)

// core holds the shim process's storepkg state: one per pod, since
// containerd runs one shim per sandbox. It never opens the store's
// database nor links the fetcher: closures are substituted by a
// short-lived `storepkg fetch` child (pkg/fetchexec), so what every pod's
// shim keeps resident is runc's shim plus the mounts.
type core struct {
	mu         sync.Mutex
	cfg        *Config
	fetchBin   string // the storepkg CLI
	fetches    map[string]*fetchCall
	containers map[string]*containerState
	// roots: GC root names by owner (sandbox or container ID); an owner
	// is a key once its owner record is written, before any root.
	roots   map[string][]string
	records *recordWriter // nil: no fetch records
	pod     podRef        // the pod this shim serves (fetchrecord.go)
	// podPaths: every store path the pod's annotations name. The node's
	// closure limits bound what the whole pod adds to the store, so each
	// fetch counts the others' closures with its own.
	podPaths []storepath.Path

	// startChild starts the fetch child where the shim reaps children
	// itself (set in plugin.go, reaper.go); nil: os/exec.
	startChild func(*exec.Cmd) (wait func() error, err error)
}

type containerState struct {
	pathEnv string // PATH entries of the root paths, for exec
	viewKey string // the shared store view it uses (views.Acquire)
}

// fetchCall is one closure substitution in flight or done. It runs on the
// shim's own context: a create whose caller gives up (kubelet's deadline)
// stops waiting, the fetch goes on, and the retried create joins it.
type fetchCall struct {
	owner  string // whose GC roots the child made
	cancel context.CancelFunc
	done   chan struct{}
	res    *fetchapi.Result
	err    error
}

func newCore() *core {
	return &core{fetches: map[string]*fetchCall{}, containers: map[string]*containerState{}, roots: map[string][]string{}}
}

// setup checks the node configuration of the first request that names
// store paths and finds the fetch child's binary.
func (c *core) setup(ctx context.Context, cfg *Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg != nil {
		return nil
	}
	if err := cfg.checkFetch(); err != nil {
		return err
	}
	bin, err := cfg.fetchBinary()
	if err != nil {
		return err
	}
	c.cfg, c.fetchBin = cfg, bin
	c.records = newRecordWriter(cfg.StatusDir)
	return nil
}

func (c *core) storeDir() string { return filepath.Join(c.cfg.StoreRoot, "nix", "store") }

func fetchKey(paths []storepath.Path) string {
	s := make([]string, len(paths))
	for i, p := range paths {
		s[i] = p.Base()
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// notePodPaths records every store path the pod names (podPaths).
func (c *core) notePodPaths(paths []storepath.Path) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.podPaths = paths
}

// rootOwner is whose GC roots a fetch for container id makes: the pod's
// sandbox when known, so a closure stays rooted from the prefetch at
// runp until the pod is removed, else the container itself.
func (c *core) rootOwner(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pod.sandboxID != "" {
		return c.pod.sandboxID
	}
	return id
}

// startFetch returns the substitution of paths' closure, starting it
// unless one is in flight or succeeded. A failed one is retried by the
// next caller. The child makes a GC root per path, owned by owner,
// before it downloads anything; the owner record comes first, and
// without it startFetch fails and nothing is rooted.
func (c *core) startFetch(ctx context.Context, owner string, paths []storepath.Path) (*fetchCall, error) {
	key := fetchKey(paths)
	c.mu.Lock()
	defer c.mu.Unlock()
	if call, ok := c.fetches[key]; ok {
		select {
		case <-call.done:
			if call.err == nil {
				return call, nil
			}
		default:
			return call, nil
		}
	}
	if _, ok := c.roots[owner]; !ok {
		// Name this shim as the roots' holder first, durably: if it dies
		// without removing them, collectors drop them (pkg/gcowner).
		// Roots without a record would never be swept, so no record, no
		// roots: the next create retries.
		if err := gcowner.Write(c.cfg.StoreRoot, owner, procid.Self()); err != nil {
			return nil, fmt.Errorf("storepkg: cannot record this shim as the holder of the pod's GC roots, so its closure is not fetched: %v: %w", err, errdefs.ErrUnavailable)
		}
		c.roots[owner] = nil
	}
	roots := make([]fetchexec.GCRoot, len(paths))
	for i, p := range paths {
		roots[i] = fetchexec.GCRoot{Name: gcowner.RootName(owner, p), Path: p}
		if !slices.Contains(c.roots[owner], roots[i].Name) {
			c.roots[owner] = append(c.roots[owner], roots[i].Name)
		}
	}
	// The child has its own deadline (FetchTimeout); this one, a little
	// later, only stops a child that ignores it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.fetchTimeout()+time.Minute)
	call := &fetchCall{owner: owner, cancel: cancel, done: make(chan struct{})}
	c.fetches[key] = call
	rec := c.records.start(fctx, c.pod, paths)
	req := c.cfg.fetchRequest(c.fetchBin, paths, roots)
	for _, p := range c.podPaths {
		if !slices.Contains(paths, p) {
			req.CountWith = append(req.CountWith, p)
		}
	}
	req.Progress = rec.progressFunc()
	req.Start = c.startChild
	logger := log.G(fctx).WithField("component", "storepkg-fetch")
	req.Log = func(line string) { logger.Info(line) }
	recWaiting := rec.waitingFunc()
	req.Waiting = func(w fetchapi.Waiting) {
		logger.WithField("paths", len(paths)).Infof("storepkg: waiting for a fetch slot (the node runs at most %d fetches at once)", w.Slots)
		if recWaiting != nil {
			recWaiting(w)
		}
	}
	go func() {
		defer cancel()
		defer close(call.done)
		start := time.Now()
		call.res, call.err = fetchexec.Run(fctx, req)
		rec.finish(call.res, call.err)
		l := log.G(fctx).WithField("paths", len(paths)).WithField("duration", time.Since(start))
		if call.err != nil {
			l.WithError(call.err).Warn("storepkg: substitution failed")
		} else {
			l.WithField("closure", len(call.res.Closure)).WithField("fetched", len(call.res.Fetched)).Info("storepkg: closure ready")
		}
	}()
	return call, nil
}

// prefetch starts substituting every closure the pod names, when its
// sandbox is created, long before kubelet asks for the containers.
func (c *core) prefetch(ctx context.Context, cfg *Config, sandboxID string, pp *podPaths) error {
	lists := pp.lists()
	if len(lists) == 0 {
		return nil
	}
	if err := c.setup(ctx, cfg); err != nil {
		return err
	}
	for _, l := range lists {
		call, err := c.startFetch(ctx, c.rootOwner(sandboxID), l)
		if err != nil {
			return err
		}
		go c.warmView(ctx, call)
	}
	return nil
}

// warmView builds the store view of a prefetched closure, so that the
// first container on it does not wait for the build.
func (c *core) warmView(ctx context.Context, call *fetchCall) {
	<-call.done
	if call.err != nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	v, err := views.Ensure(ctx, c.cfg.StoreRoot, call.res.Closure)
	if err != nil {
		if !errors.Is(err, views.ErrUnsupported) {
			log.G(ctx).WithError(err).Warn("storepkg: building store view after prefetch")
		}
		return
	}
	if v.Built {
		log.G(ctx).WithField("view", v.Key).WithField("closure", len(call.res.Closure)).WithField("files", v.Files).
			WithField("bound", len(v.Bound)).WithField("duration", v.Duration).Info("storepkg: store view built after prefetch")
	}
}

// prepareContainer makes the container's closure valid and prepares its
// bundle: storepkg's skeleton is built into the container's snapshot
// (rootfs, containerd's mounts of it, which runc's task service then
// mounts as for any container), the closure's shared store view is
// mounted read-only at /nix/store (one mount, whatever the closure's
// size), PATH leads to the root paths' bin directories. The closure's GC
// roots were made by the fetch child before it downloaded anything
// (usually the pod's prefetch); they go with their owner
// (containerDeleted).
func (c *core) prepareContainer(ctx context.Context, cfg *Config, id, bundle string, spec *specs.Spec, paths []storepath.Path, rootfs []*types.Mount) (err error) {
	if err := c.setup(ctx, cfg); err != nil {
		return err
	}
	state := &containerState{}
	call, err := c.startFetch(ctx, c.rootOwner(id), paths)
	if err != nil {
		return err
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return fmt.Errorf("storepkg: waiting for the closure of %s (substitution continues for a retry): %w", storepath.Describe(paths), ctx.Err())
	}
	if call.err != nil {
		return fetchError(call.err)
	}
	hostStore := c.storeDir()
	if err := buildSkeleton(ctx, bundle, spec.Annotations[criImageName], rootfs); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.removeView(ctx, id, state)
		}
	}()
	mounts, err := c.viewMounts(ctx, id, bundle, state, call.res.Closure)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return fmt.Errorf("storepkg: container view: %v (the node store's filesystem is full; the storepkg agent collects garbage above its high threshold): %w", err, errdefs.ErrResourceExhausted)
		}
		return fmt.Errorf("storepkg: container view: %w", err)
	}
	spec.Mounts = append(spec.Mounts, mounts...)
	state.pathEnv = mount.PathEnv(hostStore, paths)
	if spec.Process != nil {
		spec.Process.Env = prependPath(spec.Process.Env, state.pathEnv)
	}
	if err := writeSpec(bundle, spec); err != nil {
		return err
	}
	c.mu.Lock()
	c.containers[id] = state
	c.mu.Unlock()
	log.G(ctx).WithField("id", id).WithField("closure", len(call.res.Closure)).Info("storepkg: container view ready")
	return nil
}

// viewMounts returns the mounts that show the closure: one bind of the
// closure's store view, shared with every container on the node that
// runs the same closure and built by the first, and one bind per path
// too large to link into the view (views.BindEntries); where views
// cannot be made (the views directory cannot hard-link into the store),
// one bind per path over mount points in the bundle (read-only in the
// container; containerd removes them with the bundle).
func (c *core) viewMounts(ctx context.Context, id, bundle string, state *containerState, closure []storepath.Path) ([]specs.Mount, error) {
	v, err := views.Acquire(ctx, c.cfg.StoreRoot, closure, views.User{Name: id, Alive: bundle})
	switch {
	case errors.Is(err, views.ErrUnsupported):
		log.G(ctx).WithError(err).Warn("storepkg: no shared store view; mounting each closure path")
		return mount.Build(filepath.Join(bundle, "storepkg-store"), c.storeDir(), closure)
	case err != nil:
		return nil, err
	}
	state.viewKey = v.Key
	if v.Built {
		log.G(ctx).WithField("id", id).WithField("view", v.Key).WithField("files", v.Files).WithField("bound", len(v.Bound)).
			WithField("duration", v.Duration).Info("storepkg: store view built")
	}
	return append(mount.BuildShared(v.StoreDir), mount.BindStorePaths(c.storeDir(), v.Bound)...), nil
}

// fetchError gives a substitution failure the errdefs kind CRI reports:
//
//   - untrusted: FailedPrecondition, the node's trusted keys do not
//     cover the cache's signatures; a configuration change fixes it.
//   - hash_mismatch, truncated: DataLoss, not FailedPrecondition: the
//     cache served bytes that are not the NAR its signed narinfo
//     describes, corrupt or cut short at the source. Nothing on the node
//     is in the wrong state, and the same request fails again until the
//     cache is repaired.
//   - unavailable, timeout: Unavailable, worth a later retry.
//   - no_space, too_large: ResourceExhausted, the store's filesystem or
//     the node's limits per closure.
//   - canceled, aborted, other and kinds this shim does not know: Unknown.
func fetchError(err error) error {
	var kind error = errdefs.ErrUnknown
	var f *fetchapi.Failure
	if errors.As(err, &f) {
		switch f.Kind {
		case fetchapi.KindNotFound:
			kind = errdefs.ErrNotFound
		case fetchapi.KindUntrusted:
			kind = errdefs.ErrFailedPrecondition
		case fetchapi.KindHashMismatch, fetchapi.KindTruncated:
			kind = errdefs.ErrDataLoss
		case fetchapi.KindTimeout, fetchapi.KindUnavailable:
			kind = errdefs.ErrUnavailable
		case fetchapi.KindInvalidArgument:
			kind = errdefs.ErrInvalidArgument
		case fetchapi.KindNoSpace:
			kind = errdefs.ErrResourceExhausted
			return fmt.Errorf("storepkg: %v (the node store's filesystem is full; the storepkg agent collects garbage above its high threshold): %w", err, kind)
		case fetchapi.KindTooLarge:
			kind = errdefs.ErrResourceExhausted
			return fmt.Errorf("storepkg: %v (the node's limits on what a pod adds to the store: runtime options MaxClosureNarBytes, MaxClosurePaths): %w", err, kind)
		}
	}
	return fmt.Errorf("storepkg: %v: %w", err, kind)
}

// prependPath puts dirs in front of the PATH in env (adding PATH if absent).
func prependPath(env []string, dirs string) []string {
	if dirs == "" {
		return env
	}
	for i, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			if v != "" {
				dirs += ":" + v
			}
			out := slices.Clone(env)
			out[i] = "PATH=" + dirs
			return out
		}
	}
	return append(slices.Clone(env), "PATH="+dirs)
}

// execEnv rewrites an exec's process spec (JSON) so PATH finds the closure.
func (c *core) execEnv(id string, processSpec *anypb.Any) error {
	c.mu.Lock()
	state := c.containers[id]
	c.mu.Unlock()
	if state == nil || state.pathEnv == "" || processSpec == nil {
		return nil
	}
	var p specs.Process
	if err := json.Unmarshal(processSpec.GetValue(), &p); err != nil {
		return fmt.Errorf("storepkg: exec process spec: %w", err)
	}
	p.Env = prependPath(p.Env, state.pathEnv)
	b, err := json.Marshal(&p)
	if err != nil {
		return err
	}
	processSpec.Value = b
	return nil
}

// containerDeleted releases what the container held, and for the
// sandbox, the pod's GC roots: its fetches still running are stopped
// first, so no child makes a root after they are removed.
func (c *core) containerDeleted(ctx context.Context, id string) {
	c.mu.Lock()
	state := c.containers[id]
	delete(c.containers, id)
	var owned []*fetchCall
	for key, call := range c.fetches {
		if call.owner == id {
			owned = append(owned, call)
			delete(c.fetches, key)
		}
	}
	c.mu.Unlock()
	if state != nil {
		c.removeView(ctx, id, state)
	}
	for _, call := range owned {
		call.cancel()
		<-call.done
	}
	c.mu.Lock()
	roots, holder := c.roots[id]
	delete(c.roots, id)
	c.mu.Unlock()
	c.releaseRoots(ctx, roots)
	if holder {
		if err := gcowner.Remove(c.cfg.StoreRoot, id); err != nil {
			log.G(ctx).WithError(err).Warn("storepkg: removing the GC roots' owner record")
		}
	}
}

// removeView releases the container's store view and prunes the views
// that can no longer be used (their store paths deleted or replaced), so
// their hard links stop holding disk space. The skeleton goes with the
// container's snapshot, which containerd removes.
func (c *core) removeView(ctx context.Context, id string, state *containerState) {
	if state.viewKey != "" {
		root := c.cfg.StoreRoot
		if err := views.Release(root, state.viewKey, id); err != nil {
			log.G(ctx).WithError(err).Warn("storepkg: releasing store view")
		}
		state.viewKey = ""
		res, err := views.Prune(ctx, root, views.PruneOptions{})
		if err != nil {
			log.G(ctx).WithError(err).Warn("storepkg: pruning store views")
		} else if len(res.Removed) > 0 {
			log.G(ctx).WithField("views", res.Removed).WithField("freed", res.BytesFreed).Info("storepkg: pruned store views")
		}
	}
}

// rootfsOf is the bundle's root directory, as its spec names it.
func rootfsOf(bundle string, spec *specs.Spec) string {
	if spec.Root == nil || spec.Root.Path == "" {
		return filepath.Join(bundle, "rootfs")
	}
	if filepath.IsAbs(spec.Root.Path) {
		return spec.Root.Path
	}
	return filepath.Join(bundle, spec.Root.Path)
}

// clearRootfs empties rootfs, a directory nothing is mounted on, and
// leaves it: containerd removes the rootfs itself and can only remove an
// empty one.
func clearRootfs(rootfs string) error {
	if err := mount.Remove(rootfs); err != nil {
		return err
	}
	os.Mkdir(rootfs, 0o711)
	return nil
}

func (c *core) releaseRoots(ctx context.Context, names []string) {
	if len(names) == 0 {
		return
	}
	for _, n := range names {
		if err := gcowner.RemoveRoot(c.cfg.StoreRoot, n); err != nil {
			log.G(ctx).WithError(err).Warn("storepkg: releasing GC root")
		}
	}
}

func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("storepkg: reading bundle spec: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("storepkg: bundle spec %s: %w", bundle, err)
	}
	return &s, nil
}

func writeSpec(bundle string, s *specs.Spec) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := replaceFile(filepath.Join(bundle, "config.json"), b); err != nil {
		return fmt.Errorf("storepkg: writing bundle spec: %w", err)
	}
	return nil
}

// replaceFile writes data to path whole or not at all: into a hidden
// temporary beside it (".<name>.storepkg"), renamed over path; the
// temporary is removed on failure.
func replaceFile(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".storepkg")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func errdefsf(kind error, msg string) error { return fmt.Errorf("%s: %w", msg, kind) }
