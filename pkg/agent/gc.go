package agent

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/storepkg/storepkg/pkg/gcowner"
	"github.com/storepkg/storepkg/pkg/store"
)

// GCRun describes one periodic check of the store's filesystem and the
// collection it started, if any.
type GCRun struct {
	Time time.Time
	// Size and Available describe the store's filesystem before the
	// collection, UsagePercent = 100 - Available*100/Size.
	Size, Available uint64
	UsagePercent    float64
	// Collected: usage was at or above the high threshold and a
	// collection ran, asked to free MaxFreed bytes.
	Collected bool
	MaxFreed  uint64
	Result    *store.GCResult
	Err       error
	// AvailableAfter is the filesystem's available space afterwards.
	AvailableAfter uint64
	Duration       time.Duration
}

// filesystemUsage returns the size and the space available to
// unprivileged users of the filesystem holding dir, as kubelet computes
// them for its image garbage collection.
func filesystemUsage(dir string) (size, available uint64, err error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return fs.Blocks * uint64(fs.Bsize), fs.Bavail * uint64(fs.Bsize), nil
}

// bytesToFree is how much must be freed to bring usage from what size
// and available say down to low percent; 0 when usage is below high.
func bytesToFree(size, available uint64, high, low float64) (usage float64, toFree uint64) {
	if size == 0 {
		return 0, 0
	}
	usage = 100 - float64(available)*100/float64(size)
	if usage < high {
		return usage, 0
	}
	need := float64(size)*(100-low)/100 - float64(available)
	if need <= 0 {
		return usage, 0
	}
	return usage, uint64(math.Ceil(need))
}

func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		run := a.checkUsage(ctx)
		if a.cfg.OnGC != nil && ctx.Err() == nil {
			a.cfg.OnGC(run)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// logSweep reports a sweep of the GC roots of shims that are gone, and
// the owner records it could not use (each once while it stays).
func (a *Agent) logSweep(res *gcowner.SweepResult, err error) {
	if err != nil {
		a.log.WithError(err).Warn("sweeping the GC roots of gone shims")
		return
	}
	a.metrics.ownerRecordsInvalid.Set(float64(len(res.Invalid)))
	seen := map[string]bool{}
	for _, r := range res.Invalid {
		seen[r.Owner] = true
		if !a.invalidOwners[r.Owner] {
			a.log.WithField("owner", r.Owner).WithError(r.Err).
				Warn("invalid GC owner record: its roots are kept, since whether its shim runs cannot be told; remove the record and the roots named after the owner once its pod is gone")
		}
	}
	a.invalidOwners = seen
	if len(res.Owners) > 0 {
		a.log.WithField("owners", res.Owners).WithField("roots", len(res.Roots)).Info("removed the GC roots of shims that are gone")
	}
}

// logTemporaries reports the removal of the temporary directories of
// killed fetches.
func (a *Agent) logTemporaries(res *store.TempSweepResult, err error) {
	if err != nil {
		a.log.WithError(err).Warn("removing the temporary directories of killed fetches")
	}
	if res != nil && len(res.Removed) > 0 {
		a.log.WithField("directories", res.Removed).WithField("freedBytes", res.BytesFreed).
			Info("removed the temporary directories of fetches that were killed")
	}
}

// checkUsage measures the store's filesystem and collects garbage if it
// is over the high threshold.
func (a *Agent) checkUsage(ctx context.Context) GCRun {
	run := GCRun{Time: time.Now()}
	defer func() {
		a.mu.Lock()
		a.lastGC, a.gcBusy = run, false
		a.mu.Unlock()
	}()
	dir := a.store.StoreDir()
	var err error
	run.Size, run.Available, err = filesystemUsage(dir)
	if err != nil {
		run.Err = err
		a.log.WithError(err).Error("cannot measure the store's filesystem")
		return run
	}
	a.setFilesystemGauges(run.Size, run.Available)
	run.UsagePercent, run.MaxFreed = bytesToFree(run.Size, run.Available, a.cfg.HighPercent, a.cfg.LowPercent)
	if run.UsagePercent < a.cfg.HighPercent || run.MaxFreed == 0 {
		// Roots of shims that are gone (killed, or from before a reboot)
		// go on every check, not only under pressure: they would pin
		// their pods' closures for good. So do the temporary directories
		// of killed fetches, which take space no collection runs for.
		a.logTemporaries(a.store.RemoveStaleTemporaries(ctx, a.cfg.MinAge, false))
		a.logSweep(gcowner.Sweep(a.cfg.StoreRoot, false))
		a.log.WithField("usagePercent", round2(run.UsagePercent)).Debug("store filesystem below the high threshold")
		return run
	}
	a.mu.Lock()
	a.gcBusy = true
	a.mu.Unlock()
	run.Collected = true
	log := a.log.WithFields(logrus.Fields{
		"usagePercent": round2(run.UsagePercent), "highPercent": a.cfg.HighPercent, "lowPercent": a.cfg.LowPercent,
		"maxFreed": run.MaxFreed, "minAge": a.cfg.MinAge.String(),
	})
	log.Info("store filesystem above the high threshold: collecting garbage")
	start := time.Now()
	res, err := a.store.CollectNodeGarbage(ctx, store.GCOptions{
		MaxFreed: run.MaxFreed,
		MinAge:   a.cfg.MinAge,
		Log:      a.log.WithField("component", "gc"),
	})
	run.Result, run.Err = res.GC, err
	a.logTemporaries(res.Temporaries, res.TempErr)
	a.logSweep(res.Swept, res.SweepErr)
	if res.PruneErr != nil {
		log.WithError(res.PruneErr).Warn("pruning unused store views")
	} else if res.Views.BytesFreed > 0 || len(res.Views.Removed) > 0 {
		a.metrics.gcFreed.Add(float64(res.Views.BytesFreed))
		log.WithField("views", len(res.Views.Removed)).WithField("freedBytes", res.Views.BytesFreed).Info("removed unused store views")
	}
	run.Duration = time.Since(start)
	m := a.metrics
	m.gcDuration.Observe(run.Duration.Seconds())
	m.gcLast.Set(float64(time.Now().UnixNano()) / 1e9)
	if run.Result != nil {
		m.gcFreed.Add(float64(run.Result.BytesFreed))
		m.gcDeleted.Add(float64(run.Result.Valid))
		// The collector logged each one; errors.Is(run.Err,
		// store.ErrUnresolvedRoots) makes this run a failure.
		m.gcUnresolved.Set(float64(len(run.Result.Unresolved)))
	}
	if _, avail, err := filesystemUsage(dir); err == nil {
		run.AvailableAfter = avail
		a.setFilesystemGauges(run.Size, avail)
	}
	fields := logrus.Fields{"duration": run.Duration.Round(time.Millisecond).String(), "availableAfter": run.AvailableAfter}
	if run.Result != nil {
		fields["deletedPaths"] = run.Result.Valid
		fields["deletedOther"] = run.Result.Leftovers
		fields["freedBytes"] = run.Result.BytesFreed
		fields["liveRoots"] = run.Result.Roots
		fields["livePaths"] = run.Result.Live
	}
	if run.Err != nil {
		m.gcRuns.WithLabelValues(resultFailure).Inc()
		log.WithFields(fields).WithError(run.Err).Error("garbage collection failed")
		return run
	}
	m.gcRuns.WithLabelValues(resultSuccess).Inc()
	_, still := bytesToFree(run.Size, run.AvailableAfter, a.cfg.HighPercent, a.cfg.LowPercent)
	if still > 0 {
		log.WithFields(fields).Warn("garbage collected, but the store's filesystem is still above the high threshold (the rest is live, younger than the minimum age, or not the store's)")
	} else {
		log.WithFields(fields).Info("garbage collected")
	}
	return run
}

func (a *Agent) setFilesystemGauges(size, avail uint64) {
	m := a.metrics
	m.fsSize.Set(float64(size))
	m.fsAvail.Set(float64(avail))
	if size > 0 {
		m.fsUsage.Set(1 - float64(avail)/float64(size))
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }
