package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/service"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
	"github.com/strata-block/strata/plugins"
)

// Errors, wrapping the blockdev sentinels so the API's codes apply.
var (
	ErrNotFound = blockdev.ErrNotFound
	ErrExists   = blockdev.ErrExists
	ErrInvalid  = blockdev.ErrInvalidArgument
	// ErrBusy: another system backup, removal or restore is running.
	ErrBusy = fmt.Errorf("system operations run one at a time: %w", blockdev.ErrInUse)
	// ErrStale: an acknowledgement for a system backup that is not open,
	// with another token, for a volume it does not have, or repeated.
	ErrStale = fmt.Errorf("acknowledgement refused (stale, duplicate or foreign): %w", blockdev.ErrInUse)
	// ErrRejected: the backup an acknowledgement names does not check
	// out on its target.
	ErrRejected = fmt.Errorf("acknowledgement rejected: %w", blockdev.ErrInvalidArgument)
)

// Policies of a system backup.
const (
	PolicyAlways      = "always"
	PolicyIfUnchanged = "if-unchanged"
)

// LocalAgent is the name of the agent the coordinator runs with.
const LocalAgent = "local"

// snapshotPrefix names the snapshots system backups take.
const snapshotPrefix = "sys-"

// Options configure a Coordinator.
type Options struct {
	// DataDir holds coordinator.db.
	DataDir string
	// LocalSocket is the control socket of the agent on this host.
	LocalSocket string
	// Targets is the target registry the coordinator checks acks with and
	// writes system manifests through.
	Targets *targets.Service
	Logger  *slog.Logger
	// Fault is a fault-injection spec for tests (STRATA_FAULT); see
	// fault.go. Empty in production.
	Fault string
	// Parallel bounds concurrent volume backups (default 4).
	Parallel int
	// BackupMaxDuration is the agents' volume backup maximum duration
	// (strata server --backup-max-duration; default
	// backupd.DefaultMaxDuration): a failed system backup's volume backups
	// may still be committed by an agent for that long after it failed,
	// so its release is retried until then (lateWindow).
	BackupMaxDuration time.Duration
	// Key, the repository key (strata server --backup-key), authenticates
	// the system manifests this coordinator writes (a MAC) and those it
	// reads: a manifest that fails it does not load, nor one without it
	// unless AllowUnauthenticated (--backup-allow-unencrypted). Nil: none
	// written, none checked.
	Key                  *backupd.Key
	AllowUnauthenticated bool
}

// lateMargin is added to the late window of a failed run: the clock
// difference between the coordinator's host and an agent's, and the
// manifest write that ends a backup.
const lateMargin = 15 * time.Minute

// lateUntil is when failed run r's late window ends.
func (c *Coordinator) lateUntil(r *Run) time.Time { return r.Finished.Add(c.lateWindow()) }

// lateWindow is how long after a run failed a volume backup of it may
// still be committed: a backup an agent started before the failure is
// stopped by backupd.StopAfter of its maximum duration.
func (c *Coordinator) lateWindow() time.Duration {
	d := c.opts.BackupMaxDuration
	if d <= 0 {
		d = backupd.DefaultMaxDuration
	}
	return backupd.StopAfter(d) + lateMargin
}

// Coordinator runs system backups and restores. Create it with New.
type Coordinator struct {
	opts   Options
	log    *slog.Logger
	st     *store
	faults faults

	// op serializes system backups, removals, restores and the startup
	// recovery; busy says which one holds it.
	op   chan struct{} // a one-slot semaphore
	busy atomic.Value  // string

	poolMu sync.Mutex
	pool   *targetPool // the running operation's targets

	clientsMu sync.Mutex
	clients   map[string]*agent.Client // by agent name and address

	ctx    context.Context
	cancel context.CancelFunc
	jobs   sync.WaitGroup
}

// New opens the coordinator's state and, in the background, settles the
// runs a previous process left open or committing.
func New(opts Options) (*Coordinator, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	f, err := parseFaults(opts.Fault)
	if err != nil {
		return nil, err
	}
	st, err := openStore(filepath.Join(opts.DataDir, StateFile))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Coordinator{opts: opts, log: log, st: st, faults: f, ctx: ctx, cancel: cancel, clients: map[string]*agent.Client{},
		op: make(chan struct{}, 1)}
	c.op <- struct{}{}
	c.locked("the startup recovery of unsettled system backups")
	c.jobs.Add(1)
	go func() {
		defer c.jobs.Done()
		defer c.unlock()
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Minute)
		defer rcancel()
		c.recover(rctx)
	}()
	return c, nil
}

// lock takes the operation lock for what, waiting for the operation
// that holds it until ctx ends.
func (c *Coordinator) lock(ctx context.Context, what string) error {
	select {
	case c.op <- struct{}{}:
		c.locked(what)
		return nil
	default:
	}
	holder, _ := c.busy.Load().(string)
	c.log.Info("waiting for another system operation", "op", what, "running", holder)
	select {
	case c.op <- struct{}{}:
		c.locked(what)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s to end: %w (%w)", holder, context.Cause(ctx), ErrBusy)
	}
}

// locked starts an operation that holds the lock: its name, its pool.
func (c *Coordinator) locked(what string) {
	c.busy.Store(what)
	c.poolMu.Lock()
	c.pool = newTargetPool(c.opts.Targets)
	c.poolMu.Unlock()
}

func (c *Coordinator) unlock() {
	c.poolMu.Lock()
	p := c.pool
	c.pool = nil
	c.poolMu.Unlock()
	if p != nil {
		p.close()
	}
	c.busy.Store("")
	<-c.op
}

// Close cancels running operations, waits for them, and closes the state.
func (c *Coordinator) Close() error {
	c.cancel()
	c.jobs.Wait()
	return c.st.close()
}

// recover settles the runs of a previous process: an open run failed (its
// agents' answers went to a dead process); a committing one is committed
// when the default target holds its manifest, else failed; committed runs
// with copies pending get them.
func (c *Coordinator) recover(ctx context.Context) {
	runs, err := c.st.runs()
	if err != nil {
		c.log.Error("coordinator state does not load", "err", err)
		return
	}
	for _, r := range runs {
		switch {
		case r.State == StateOpen:
			if c.committedAfterAll(ctx, r) {
				continue
			}
			c.failRun(ctx, r, errors.New("the coordinator stopped while the system backup was open"))
		case r.State == StateFailing:
			c.failRun(ctx, r, errors.New(r.Error))
		case r.State == StateCommitting:
			c.settle(ctx, r)
		case r.State == StateCommitted && len(r.CopiesPending) > 0:
			c.copyPending(ctx, r)
		case r.State == StateFailed && !r.Released:
			c.releaseFailed(ctx, r)
		case r.State == StateRemoving:
			if err := c.finishRemove(ctx, r); err != nil {
				c.log.Warn("finish removing a system backup", "system", r.ID, "err", err)
			}
		}
	}
}

// acks are the acknowledgements the volume backups m names stand for, as
// a run records them.
func (m *Manifest) acks() map[string]Ack {
	out := make(map[string]Ack, len(m.Volumes))
	for _, v := range m.Volumes {
		out[ackKey(v.Agent, v.Volume)] = Ack{System: m.ID, Token: m.Token, VolumeBackup: v}
	}
	return out
}

// committedAfterAll reports whether open run r must not be failed: its
// committed manifest is on its default target (this coordinator's state
// is older than the targets: a data directory restored from a file backup
// taken while the run was open), in which case r is recorded committed as
// the manifest says, or that target cannot be read (retried later).
// Failing it would delete the volume backups the manifest names.
func (c *Coordinator) committedAfterAll(ctx context.Context, r *Run) bool {
	if r.Config == nil {
		return false // not captured: no volume was backed up for it
	}
	def := r.Config.DefaultTarget()
	m, err := c.loadManifest(ctx, def, r.ID)
	switch {
	case errors.Is(err, plugins.ErrNotFound):
		return false
	case errors.Is(err, blockdev.ErrNotFound):
		c.log.Error("open system backup left open: its default target is not registered, so whether it committed cannot be known; register it again (strata target add) to settle it", "system", r.ID, "target", def, "err", err)
		return true
	case err != nil && !errors.Is(err, ErrCorrupt):
		c.log.Warn("open system backup left open: its default target cannot be read to see whether it committed; retried at the next start or system backup", "system", r.ID, "target", def, "err", err)
		return true
	case err != nil || m.Token != r.Token:
		return false // damaged, or another run's: not committed as recorded
	}
	if _, err := c.st.update(r.ID, func(x *Run) error {
		if x.State != StateOpen {
			return fmt.Errorf("system backup %s is %s", x.ID, x.State)
		}
		cfg := m.Config
		x.State, x.Finished, x.Config, x.CopiesPending = StateCommitted, m.Committed, &cfg, otherTargets(&cfg, def)
		x.Acks = m.acks()
		return nil
	}); err != nil {
		c.log.Error("record a system backup committed on its target", "system", r.ID, "err", err)
		return true
	}
	c.log.Warn("system backup recorded as open is committed on its default target (this coordinator's state is older than the target's): recorded as committed", "system", r.ID, "target", def)
	if nr, err := c.st.run(r.ID); err == nil {
		c.copyPending(ctx, nr)
	}
	return true
}

// settle decides a committing run from its default target.
func (c *Coordinator) settle(ctx context.Context, r *Run) {
	m, err := c.manifestFromRun(r)
	if err != nil {
		c.failRun(ctx, r, err)
		return
	}
	def := r.Config.DefaultTarget()
	got, err := c.loadManifest(ctx, def, r.ID)
	switch {
	case err == nil && got.Token == m.Token:
		pending := otherTargets(r.Config, def)
		if _, err := c.st.update(r.ID, func(x *Run) error {
			x.State, x.CopiesPending = StateCommitted, pending
			if x.Finished.IsZero() {
				x.Finished = got.Committed
			}
			return nil
		}); err != nil {
			c.log.Error("settle system backup", "system", r.ID, "err", err)
			return
		}
		c.log.Info("system backup committed before the restart; finishing its copies", "system", r.ID)
		r, _ = c.st.run(r.ID)
		if r != nil {
			c.copyPending(ctx, r)
		}
	case err == nil:
		c.log.Error("system backup still committing: the default target holds a manifest with another token; left for an operator", "system", r.ID, "token", r.Token, "found", got.Token)
	case errors.Is(err, plugins.ErrNotFound) || errors.Is(err, ErrCorrupt):
		c.failRun(ctx, r, errors.New("the coordinator stopped before the system manifest was written"))
	default:
		c.log.Warn("system backup still committing: its default target cannot be read; retried at the next start or system backup", "system", r.ID, "target", def, "err", err)
	}
}

// BackupOptions select how a system backup runs.
type BackupOptions struct {
	// Policy is PolicyAlways (default) or PolicyIfUnchanged.
	Policy string `json:"policy,omitempty"`
	// ConsistencyGroup snapshots every volume at one instant, with
	// writes held on every agent meanwhile.
	ConsistencyGroup bool `json:"consistency_group,omitempty"`
	// Timeout bounds the whole system backup (0: 6h; negative is
	// refused).
	Timeout Duration `json:"timeout,omitempty"`
}

// Duration is a time.Duration that reads "90s" or a number of seconds in JSON.
type Duration time.Duration

// UnmarshalJSON reads a Go duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration: want \"90s\" or seconds, got %s", b)
	}
	if ns := n * float64(time.Second); ns >= math.MaxInt64 || ns <= math.MinInt64 {
		return fmt.Errorf("duration: %s seconds is out of range", b)
	}
	*d = Duration(n * float64(time.Second))
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Event is one line of the coordinator's NDJSON answers.
type Event struct {
	// Event is "accepted", "progress", "volume" (one volume finished),
	// "done" or "error".
	Event string `json:"event"`
	Agent string `json:"agent,omitempty"`
	*backupd.Progress
	System  *Summary       `json:"system,omitempty"`
	Result  *VolumeResult  `json:"result,omitempty"`
	Restore *RestoreReport `json:"restore,omitempty"`
	Error   string         `json:"error,omitempty"`
	Code    string         `json:"code,omitempty"`
}

// VolumeResult is one volume's outcome in a system backup or restore.
type VolumeResult struct {
	Agent    string `json:"agent"`
	Volume   string `json:"volume"`
	Target   string `json:"target"`
	BackupID string `json:"backup_id,omitempty"`
	Digest   string `json:"digest,omitempty"`
	// Status is "acknowledged", "reused", "restored", "skipped" or "failed".
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

// Summary describes a system backup.
type Summary struct {
	ID            string         `json:"id"`
	Token         uint64         `json:"token"`
	State         string         `json:"state"`
	Started       time.Time      `json:"started"`
	Finished      time.Time      `json:"finished,omitzero"`
	Error         string         `json:"error,omitempty"`
	Volumes       []VolumeBackup `json:"volumes,omitempty"`
	Targets       []string       `json:"targets,omitempty"`
	CopiesPending []string       `json:"copies_pending,omitempty"`
	Config        *Config        `json:"config,omitempty"`
	// Known is false for a manifest found on a target that this
	// coordinator has no record of (another host's, or before a wipe).
	Known bool `json:"known"`
}

func newSystemID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102t150405z") + "-" + hex.EncodeToString(b[:])
}

// Backup runs one system backup to its end: committed, or failed with no
// manifest anywhere. progress receives events (it must return quickly).
func (c *Coordinator) Backup(ctx context.Context, opts BackupOptions, progress func(Event)) (*Summary, error) {
	if progress == nil {
		progress = func(Event) {}
	}
	switch opts.Policy {
	case "":
		opts.Policy = PolicyAlways
	case PolicyAlways, PolicyIfUnchanged:
	default:
		return nil, fmt.Errorf("policy %q: want %s or %s: %w", opts.Policy, PolicyAlways, PolicyIfUnchanged, ErrInvalid)
	}
	timeout := time.Duration(opts.Timeout)
	switch {
	case timeout < 0:
		return nil, fmt.Errorf("timeout %v: want a positive duration (or none for 6h): %w", timeout, ErrInvalid)
	case timeout == 0:
		timeout = 6 * time.Hour
	}
	id := newSystemID(time.Now())
	if err := c.lock(ctx, "system backup "+id); err != nil {
		return nil, err
	}
	defer c.unlock()
	uctx, ucancel := context.WithTimeout(ctx, 2*time.Minute)
	c.retryUnsettled(uctx)
	ucancel()

	run, err := c.st.open(id, time.Now().UTC())
	if err != nil {
		return nil, fmt.Errorf("open system backup: %w", err)
	}
	log := c.log.With("system", run.ID, "token", run.Token)
	log.Info("system backup opened", "policy", opts.Policy, "consistency_group", opts.ConsistencyGroup)
	progress(Event{Event: "accepted", System: &Summary{ID: run.ID, Token: run.Token, State: StateOpen, Started: run.Started, Known: true}})
	c.faults.hit("opened")

	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("system backup %s timed out after %v", run.ID, timeout))
	defer cancel()
	if err := c.runBackup(ctx, run, opts, progress, log); err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", cause, err)
		}
		// The run's own context may be done: settle with a fresh one.
		fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer fcancel()
		r, _ := c.st.run(run.ID)
		if r == nil {
			r = run
		}
		c.failRun(fctx, r, err)
		return nil, fmt.Errorf("system backup %s failed: %w", run.ID, err)
	}
	r, err := c.st.run(run.ID)
	if err != nil {
		return nil, err
	}
	return c.summary(r, nil), nil
}

func (c *Coordinator) runBackup(ctx context.Context, run *Run, opts BackupOptions, progress func(Event), log *slog.Logger) error {
	cfg, err := c.capture(ctx, opts)
	if err != nil {
		return err
	}
	if len(cfg.Volumes) == 0 {
		return fmt.Errorf("no volumes to back up: %w", ErrInvalid)
	}
	if _, err := c.st.update(run.ID, func(r *Run) error {
		if r.State != StateOpen || r.Token != run.Token {
			return fmt.Errorf("system backup %s is %s: %w", r.ID, r.State, ErrStale)
		}
		r.Config = cfg
		return nil
	}); err != nil {
		return err
	}
	run.Config = cfg
	// Every agent backs up to targets of the same names and URLs as the
	// coordinator's; register those an agent lacks (same credentials
	// file path: agents on one host share it).
	reg := c.opts.Targets.Registry()
	for _, a := range cfg.Agents {
		if a.Name == LocalAgent {
			continue
		}
		if _, err := c.ensureTargets(ctx, a.Name, cfg.Targets, func(t TargetConfig) string {
			rt, _ := reg.Get(t.Name)
			return rt.CredentialsFile
		}); err != nil {
			return err
		}
	}
	c.faults.hit("captured")

	snap := snapshotPrefix + run.ID
	if opts.ConsistencyGroup {
		if err := c.groupSnapshot(ctx, cfg, snap); err != nil {
			return err
		}
		log.Info("consistency group snapshotted", "snapshot", snap, "volumes", len(cfg.Volumes))
	}
	c.faults.hit("snapshotted")

	// Back up every volume, at most Parallel at a time; the first error
	// cancels the rest.
	bctx, bcancel := context.WithCancelCause(ctx)
	defer bcancel(nil)
	sem := make(chan struct{}, c.opts.Parallel)
	var wg sync.WaitGroup
	var progMu sync.Mutex
	emit := func(ev Event) { progMu.Lock(); progress(ev); progMu.Unlock() }
	for _, vc := range cfg.Volumes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-bctx.Done():
				return
			}
			res, err := c.backupVolume(bctx, run, vc, snap, !opts.ConsistencyGroup, opts.Policy, emit)
			if err != nil {
				err = fmt.Errorf("volume %q of agent %q: %w", vc.Name, vc.Agent, err)
				emit(Event{Event: "volume", Result: &VolumeResult{Agent: vc.Agent, Volume: vc.Name, Target: vc.Target, Status: "failed", Error: err.Error()}})
				bcancel(err)
				return
			}
			emit(Event{Event: "volume", Result: res})
		}()
	}
	wg.Wait()
	if err := context.Cause(bctx); err != nil {
		return err
	}
	c.faults.hit("acked-all")
	if err := c.commit(ctx, run, log); err != nil {
		return err
	}
	c.cleanSnapshots(ctx, run.ID, log)
	return nil
}

// backupVolume has vc's agent back up the volume (after a fresh snapshot
// unless the group took it) and hands the acknowledgement to Accept.
func (c *Coordinator) backupVolume(ctx context.Context, run *Run, vc VolumeConfig, snap string, takeSnapshot bool, policy string, emit func(Event)) (*VolumeResult, error) {
	cl, err := c.client(vc.Agent)
	if err != nil {
		return nil, err
	}
	if takeSnapshot {
		var si blockdev.SnapshotInfo
		if err := cl.Do(ctx, http.MethodPost, "/v1/volumes/"+vc.Name+"/snapshots", agent.SnapshotRequest{Name: snap}, &si); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", snap, err)
		}
	}
	req := service.CreateRequest{
		Volume: vc.Name, Target: vc.Target, Snapshot: snap, Policy: policy,
		Tags: map[string]string{backupd.TagSystem: run.ID, backupd.TagToken: strconv.FormatUint(run.Token, 10)},
	}
	c.faults.hit("backup")
	b, err := c.streamBackup(ctx, cl, req, vc.Agent, emit)
	if err != nil {
		return nil, err
	}
	if b.Reused && b.Tags[backupd.TagSystem] == "" {
		// Only a backup a system backup already holds may be named
		// again: an ordinary one could be pruned under the manifest.
		req.Policy = PolicyAlways
		if b, err = c.streamBackup(ctx, cl, req, vc.Agent, emit); err != nil {
			return nil, err
		}
	}
	ack := func(b *service.Backup) Ack {
		return Ack{System: run.ID, Token: run.Token, VolumeBackup: VolumeBackup{Agent: vc.Agent, Volume: vc.Name, BackupID: b.ID, Target: b.Target,
			ManifestKey: b.ManifestKey, Digest: b.Digest, Size: b.Size, Snapshot: b.Snapshot, Reused: b.Reused}}
	}
	if err := c.faults.delay(ctx, vc.Name); err != nil {
		return nil, err
	}
	err = c.Accept(ctx, ack(b))
	if err != nil && b.Reused && errors.Is(err, ErrRejected) {
		// The reused backup cannot be named again (the system backup
		// that made it was deleted, though a later one still holds
		// it): take a new one rather than fail the volume, every run,
		// until it is written.
		c.log.Info("reused backup refused; backing up", "volume", vc.Name, "agent", vc.Agent, "backup", b.ID, "err", err)
		req.Policy = PolicyAlways
		if b, err = c.streamBackup(ctx, cl, req, vc.Agent, emit); err != nil {
			return nil, err
		}
		err = c.Accept(ctx, ack(b))
	}
	if err != nil {
		return nil, err
	}
	c.faults.hit("acked")
	status := "acknowledged"
	if b.Reused {
		status = "reused"
	}
	var up int64
	if b.Stats != nil {
		up = b.BytesUploaded
	}
	return &VolumeResult{Agent: vc.Agent, Volume: vc.Name, Target: b.Target, BackupID: b.ID, Digest: b.Digest, Status: status, Bytes: up}, nil
}

// streamBackup has an agent run a backup and returns its result,
// forwarding progress.
func (c *Coordinator) streamBackup(ctx context.Context, cl *agent.Client, req service.CreateRequest, agentName string, emit func(Event)) (*service.Backup, error) {
	b, err := service.CreateBackup(ctx, cl, req, func(ev service.Event) {
		emit(Event{Event: "progress", Agent: agentName, Progress: ev.Progress})
	})
	if err != nil {
		return nil, fmt.Errorf("agent %q: %w", agentName, err)
	}
	return b, nil
}

// Accept takes an acknowledgement: only for the open system backup with
// its token, for a volume of its configuration not yet acknowledged, and
// only when the backup it names loads from the target with the same id,
// volume, digest and tags. Anything else changes nothing and is an error
// (ErrStale or ErrRejected).
func (c *Coordinator) Accept(ctx context.Context, ack Ack) error {
	run, err := c.st.run(ack.System)
	if err != nil {
		return fmt.Errorf("ack for system backup %q: %v: %w", ack.System, err, ErrStale)
	}
	vc, dup, err := checkAck(run, ack)
	if err != nil || dup {
		return err
	}
	if err := c.checkOnTarget(ctx, run, vc, ack); err != nil {
		return err
	}
	// Check again inside the transaction that records it: the run may
	// have failed or been acknowledged meanwhile.
	recorded := false
	_, err = c.st.update(ack.System, func(r *Run) error {
		_, dup, err := checkAck(r, ack)
		if err != nil || dup {
			return err
		}
		if r.Acks == nil {
			r.Acks = map[string]Ack{}
		}
		r.Acks[ackKey(ack.Agent, ack.Volume)] = ack
		recorded = true
		return nil
	})
	if err != nil {
		return err
	}
	if recorded {
		c.log.Info("volume backup acknowledged", "system", ack.System, "agent", ack.Agent, "volume", ack.Volume, "backup", ack.BackupID, "target", ack.Target, "reused", ack.Reused)
	}
	return nil
}

// checkAck checks ack against run's state: open, same token, a configured
// volume, on its target, not yet acknowledged. An ack equal to the one
// recorded is a duplicate that changes nothing (dup true, no error); one
// that differs is refused.
func checkAck(run *Run, ack Ack) (vc VolumeConfig, dup bool, err error) {
	if run.State != StateOpen {
		return VolumeConfig{}, false, fmt.Errorf("ack for system backup %s, which is %s: %w", run.ID, run.State, ErrStale)
	}
	if ack.Token != run.Token {
		return VolumeConfig{}, false, fmt.Errorf("ack for system backup %s with token %d; its token is %d: %w", run.ID, ack.Token, run.Token, ErrStale)
	}
	if run.Config == nil {
		return VolumeConfig{}, false, fmt.Errorf("ack for system backup %s before its configuration was captured: %w", run.ID, ErrStale)
	}
	i := slices.IndexFunc(run.Config.Volumes, func(v VolumeConfig) bool { return v.Agent == ack.Agent && v.Name == ack.Volume })
	if i < 0 {
		return VolumeConfig{}, false, fmt.Errorf("ack for volume %q of agent %q, which system backup %s does not have: %w", ack.Volume, ack.Agent, run.ID, ErrStale)
	}
	if prev, ok := run.Acks[ackKey(ack.Agent, ack.Volume)]; ok {
		if prev == ack {
			return run.Config.Volumes[i], true, nil
		}
		return VolumeConfig{}, false, fmt.Errorf("ack for volume %q of agent %q: already acknowledged with backup %s: %w", ack.Volume, ack.Agent, prev.BackupID, ErrStale)
	}
	vc = run.Config.Volumes[i]
	if ack.Target != vc.Target {
		return VolumeConfig{}, false, fmt.Errorf("ack for volume %q names target %q; the volume's target is %q: %w", ack.Volume, ack.Target, vc.Target, ErrRejected)
	}
	if !ack.Reused && ack.Snapshot != snapshotPrefix+run.ID {
		return VolumeConfig{}, false, fmt.Errorf("ack for volume %q: snapshot %q, not the system backup's %s%s: %w", ack.Volume, ack.Snapshot, snapshotPrefix, run.ID, ErrRejected)
	}
	return vc, false, nil
}

// checkOnTarget loads the backup manifest the ack names from the target
// and compares it with the ack.
func (c *Coordinator) checkOnTarget(ctx context.Context, run *Run, vc VolumeConfig, ack Ack) error {
	if ack.ManifestKey != backupd.ManifestKey(ack.Volume, ack.BackupID) {
		return fmt.Errorf("ack for volume %q: manifest key %q does not name backup %q: %w", ack.Volume, ack.ManifestKey, ack.BackupID, ErrRejected)
	}
	tg, done, err := c.openTarget(ctx, vc.Target)
	if err != nil {
		return fmt.Errorf("check ack for volume %q: %w", ack.Volume, err)
	}
	defer done()
	m, err := backupd.Open(tg, &backupd.Options{Logger: c.log}).LoadManifest(ctx, ack.ManifestKey)
	if err != nil {
		return fmt.Errorf("ack for volume %q names backup %s, which does not load from target %q: %v: %w", ack.Volume, ack.BackupID, vc.Target, err, ErrRejected)
	}
	var bad []string
	if m.Digest != ack.Digest {
		bad = append(bad, fmt.Sprintf("digest %s, ack says %s", m.Digest, ack.Digest))
	}
	if m.Size != ack.Size {
		bad = append(bad, fmt.Sprintf("size %d, ack says %d", m.Size, ack.Size))
	}
	if m.Snapshot != ack.Snapshot {
		bad = append(bad, fmt.Sprintf("snapshot %q, ack says %q", m.Snapshot, ack.Snapshot))
	}
	tok := strconv.FormatUint(run.Token, 10)
	switch {
	case !ack.Reused && (m.Tags[backupd.TagSystem] != run.ID || m.Tags[backupd.TagToken] != tok):
		bad = append(bad, fmt.Sprintf("tags %s=%q %s=%q, want %q and %q", backupd.TagSystem, m.Tags[backupd.TagSystem], backupd.TagToken, m.Tags[backupd.TagToken], run.ID, tok))
	case ack.Reused:
		if err := c.heldByCommitted(ctx, tg, vc.Target, m.Tags[backupd.TagSystem], ack.BackupID); err != nil {
			bad = append(bad, "reused, but "+err.Error())
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("ack for volume %q: backup %s on target %q has %s: %w", ack.Volume, ack.BackupID, vc.Target, strings.Join(bad, "; "), ErrRejected)
	}
	return nil
}

// heldByCommitted checks that committed system backup sys names backup
// id: this coordinator's record says so, or (a system backup it has no
// record of) the manifest on the target does.
func (c *Coordinator) heldByCommitted(ctx context.Context, tg plugins.Target, target, sys, id string) error {
	if sys == "" {
		return errors.New("no system backup holds it")
	}
	if r, err := c.st.run(sys); err == nil {
		if r.State != StateCommitted || !r.namesBackup(id) {
			return fmt.Errorf("system backup %s that made it is %s or does not name it", sys, r.State)
		}
		return nil
	}
	m, err := c.loadManifestFrom(ctx, tg, target, sys)
	if err != nil {
		return fmt.Errorf("system backup %s that made it: %v", sys, err)
	}
	if !slices.ContainsFunc(m.Volumes, func(v VolumeBackup) bool { return v.BackupID == id }) {
		return fmt.Errorf("system backup %s that made it does not name it", sys)
	}
	return nil
}

// commit writes the system manifest: committing (persisted), conditional
// create on the default target, read back, copies, committed.
func (c *Coordinator) commit(ctx context.Context, run *Run, log *slog.Logger) error {
	r, err := c.st.update(run.ID, func(r *Run) error {
		if r.State != StateOpen || r.Token != run.Token {
			return fmt.Errorf("system backup %s is %s: %w", r.ID, r.State, ErrStale)
		}
		if len(r.Acks) != len(r.Config.Volumes) {
			return fmt.Errorf("system backup %s: %d of %d volumes acknowledged", r.ID, len(r.Acks), len(r.Config.Volumes))
		}
		r.State = StateCommitting
		return nil
	})
	if err != nil {
		return err
	}
	c.faults.hit("committing")
	m, err := c.manifestFromRun(r)
	if err != nil {
		return err
	}
	m.Committed = time.Now().UTC()
	b, err := m.Encode(c.opts.Key)
	if err != nil {
		return err
	}
	def := r.Config.DefaultTarget()
	if err := c.putManifest(ctx, def, m.ID, b); err != nil {
		return fmt.Errorf("write the system manifest to the default target %q: %w", def, err)
	}
	c.faults.hit("written")
	pending := c.writeCopies(ctx, m.ID, b, otherTargets(r.Config, def))
	c.faults.hit("copied")
	if _, err := c.st.update(run.ID, func(r *Run) error {
		r.State, r.Finished, r.CopiesPending = StateCommitted, m.Committed, pending
		return nil
	}); err != nil {
		// The manifest is on the default target: the next start settles
		// the run as committed.
		return fmt.Errorf("record the commit: %w", err)
	}
	log.Info("system backup committed", "volumes", len(m.Volumes), "default_target", def, "copies_pending", pending)
	return nil
}

func otherTargets(cfg *Config, def string) []string {
	var out []string
	for _, t := range cfg.Targets {
		if t.Name != def {
			out = append(out, t.Name)
		}
	}
	return out
}

// manifestFromRun builds the manifest from a run's configuration and acks.
func (c *Coordinator) manifestFromRun(r *Run) (*Manifest, error) {
	if r.Config == nil {
		return nil, fmt.Errorf("system backup %s has no configuration", r.ID)
	}
	m := &Manifest{ID: r.ID, Token: r.Token, Started: r.Started, Committed: r.Finished, Config: *r.Config}
	for _, v := range r.Config.Volumes {
		a, ok := r.Acks[ackKey(v.Agent, v.Name)]
		if !ok {
			return nil, fmt.Errorf("system backup %s: volume %q of agent %q not acknowledged", r.ID, v.Name, v.Agent)
		}
		m.Volumes = append(m.Volumes, a.VolumeBackup)
	}
	if m.Committed.IsZero() {
		m.Committed = time.Now().UTC()
	}
	return m, nil
}

// putManifest writes b with conditional create and reads it back; an
// existing identical object is success (a retry), a different one is an
// error.
func (c *Coordinator) putManifest(ctx context.Context, target, id string, b []byte) error {
	tg, done, err := c.openTarget(ctx, target)
	if err != nil {
		return err
	}
	defer done()
	key := ManifestKey(id)
	err = tg.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b)))
	if err != nil && !errors.Is(err, plugins.ErrAlreadyExists) {
		return err
	}
	got, err := readAll(ctx, tg, key)
	if err != nil {
		return fmt.Errorf("read back %s: %w", key, err)
	}
	if existing, err := DecodeManifest(got); err != nil || !bytes.Equal(got, b) {
		// A copy from an earlier attempt of this commit differs only
		// in its commit time; anything else is not ours.
		want, _ := DecodeManifest(b)
		if err != nil || existing.Token != want.Token || existing.ID != want.ID {
			return fmt.Errorf("read back %s on target %q: it differs from what was written: %w", key, target, ErrCorrupt)
		}
	}
	return nil
}

func readAll(ctx context.Context, tg plugins.Target, key string) ([]byte, error) {
	rc, _, err := tg.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", key, maxManifestSize, ErrCorrupt)
	}
	return b, nil
}

// loadManifest reads and checks system manifest id from target.
func (c *Coordinator) loadManifest(ctx context.Context, target, id string) (*Manifest, error) {
	tg, done, err := c.openTarget(ctx, target)
	if err != nil {
		return nil, err
	}
	defer done()
	return c.loadManifestFrom(ctx, tg, target, id)
}

// loadManifestFrom reads system manifest id from tg (target names it in
// errors), checks it and authenticates it under the coordinator's key.
func (c *Coordinator) loadManifestFrom(ctx context.Context, tg plugins.Target, target, id string) (*Manifest, error) {
	b, err := readAll(ctx, tg, ManifestKey(id))
	if err != nil {
		return nil, fmt.Errorf("system backup %s on target %q: %w", id, target, err)
	}
	m, err := DecodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("system backup %s on target %q: %w", id, target, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("system backup %s on target %q: the manifest names %s: %w", id, target, m.ID, ErrCorrupt)
	}
	if err := m.Authenticate(c.opts.Key, c.opts.AllowUnauthenticated); err != nil {
		return nil, fmt.Errorf("system backup %s on target %q: %w", id, target, err)
	}
	return m, nil
}

// failRun marks r failed. A run that was committing becomes failing
// (persisted) before its manifest copies are deleted, so that a restart
// finishes the deletion instead of committing; it becomes failed only
// once no copy is left. Then its volume backups are released.
func (c *Coordinator) failRun(ctx context.Context, r *Run, cause error) {
	switch r.State {
	case StateCommitted, StateFailed, StateRemoving:
		return
	case StateCommitting, StateFailing:
		nr, err := c.st.update(r.ID, func(x *Run) error {
			if x.State != StateCommitting && x.State != StateFailing {
				return fmt.Errorf("system backup %s is %s", x.ID, x.State)
			}
			x.State, x.Error = StateFailing, cause.Error()
			return nil
		})
		if err != nil {
			c.log.Error("record a failing system backup", "system", r.ID, "err", err)
			return
		}
		r = nr
		for _, t := range r.Config.Targets {
			if err := c.deleteManifest(ctx, t.Name, r.ID); err != nil {
				c.log.Error("a failed system backup's manifest copy could not be deleted; retried at the next start or system backup", "system", r.ID, "target", t.Name, "err", err)
				return
			}
		}
	}
	nr, err := c.st.update(r.ID, func(x *Run) error {
		if x.State == StateCommitted {
			return fmt.Errorf("system backup %s committed meanwhile", x.ID)
		}
		x.State, x.Error, x.Finished = StateFailed, cause.Error(), time.Now().UTC()
		return nil
	})
	if err != nil {
		c.log.Error("record a failed system backup", "system", r.ID, "err", err)
		return
	}
	c.log.Warn("system backup failed", "system", r.ID, "err", cause)
	c.releaseFailed(ctx, nr)
}

// releaseFailed deletes the volume backups a failed system backup's
// agents made for it (tagged with its id): no manifest names them, and
// being held they would otherwise stay forever. A backup another run
// names (reused) is kept. Retried at every start and system backup until
// it succeeds on every target: the run is marked released only when every
// manifest of its volumes on every target was read (a manifest that does
// not load may carry its tag).
func (c *Coordinator) releaseFailed(ctx context.Context, r *Run) {
	if r.Config == nil {
		_, _ = c.st.update(r.ID, func(x *Run) error { x.Released = true; return nil })
		return
	}
	runs, err := c.st.runs()
	if err != nil {
		return
	}
	namedElsewhere := func(id string) bool {
		return slices.ContainsFunc(runs, func(o *Run) bool { return o.ID != r.ID && o.State != StateFailed && o.namesBackup(id) })
	}
	ok := true
	for _, t := range r.Config.Targets {
		if err := c.withRepo(ctx, t.Name, func(tg plugins.Target, repo *backupd.Repository) error {
			var unread []string
			for _, v := range r.Config.Volumes {
				if v.Target != t.Name {
					continue
				}
				// A listing that failed (a target that does not answer)
				// is an error: acting on part of it would mark the run
				// released with backups of it left held for good.
				l, err := repo.ListManifests(ctx, v.Name)
				if err != nil {
					return err
				}
				for _, b := range l.Backups {
					if b.Tags[backupd.TagSystem] != r.ID || namedElsewhere(b.ID) {
						continue
					}
					if err := repo.DeleteHeld(ctx, b.Volume, b.ID); err != nil && !errors.Is(err, plugins.ErrNotFound) {
						return fmt.Errorf("volume %q backup %s: %w", b.Volume, b.ID, err)
					}
				}
				if len(l.Skipped) > 0 {
					// Its tags cannot be read: it may be one of this run's.
					unread = append(unread, fmt.Sprintf("%s (%s)", l.Skipped[0].Key, l.Skipped[0].Err))
					if len(l.Skipped) > 1 {
						unread[len(unread)-1] += fmt.Sprintf(" and %d more", len(l.Skipped)-1)
					}
				}
			}
			if len(unread) > 0 {
				return fmt.Errorf("manifests that do not load, which may belong to system backup %s: %s (repair or remove them)",
					r.ID, strings.Join(unread, "; "))
			}
			return nil
		}); err != nil {
			c.log.Warn("release a failed system backup's volume backups; retried later", "system", r.ID, "target", t.Name, "err", err)
			ok = false
		}
	}
	if !ok {
		return
	}
	if until := c.lateUntil(r); time.Now().Before(until) {
		// An agent may still commit a backup it started for the run
		// (one cut off from the coordinator, say); released, the run
		// would not be looked at again and that backup would stay held
		// for good. Retried until then.
		c.log.Debug("failed system backup's volume backups released so far; looked at again until its late window ends", "system", r.ID, "until", until)
		return
	}
	_, _ = c.st.update(r.ID, func(x *Run) error { x.Released = true; return nil })
}

// withRepo opens target name and runs fn with it and its repository.
func (c *Coordinator) withRepo(ctx context.Context, name string, fn func(plugins.Target, *backupd.Repository) error) error {
	tg, done, err := c.openTarget(ctx, name)
	if err != nil {
		return err
	}
	defer done()
	return fn(tg, backupd.Open(tg, &backupd.Options{Logger: c.log}))
}

func (c *Coordinator) deleteManifest(ctx context.Context, target, id string) error {
	tg, done, err := c.openTarget(ctx, target)
	if err != nil {
		return err
	}
	defer done()
	if err := tg.Delete(ctx, []string{ManifestKey(id)}); err != nil && !errors.Is(err, plugins.ErrNotFound) {
		return err
	}
	return nil
}

// copyPending writes the manifest copies a committed run still lacks.
func (c *Coordinator) copyPending(ctx context.Context, r *Run) {
	def := r.Config.DefaultTarget()
	m, err := c.loadManifest(ctx, def, r.ID)
	if err != nil {
		c.log.Warn("system manifest copies: the default target's copy does not load", "system", r.ID, "err", err)
		return
	}
	b, err := m.Encode(c.opts.Key)
	if err != nil {
		c.log.Error("system manifest copies: the manifest does not encode", "system", r.ID, "err", err)
		return
	}
	still := c.writeCopies(ctx, r.ID, b, r.CopiesPending)
	if _, err := c.st.update(r.ID, func(x *Run) error { x.CopiesPending = still; return nil }); err != nil {
		c.log.Error("record the system manifest copies", "system", r.ID, "err", err)
		return
	}
	c.log.Info("system manifest copies written", "system", r.ID, "pending", still)
}

// writeCopies writes manifest b of system backup id to each of targets
// and returns those it could not write (retried later).
func (c *Coordinator) writeCopies(ctx context.Context, id string, b []byte, targets []string) []string {
	var failed []string
	for _, t := range targets {
		if err := c.putManifest(ctx, t, id, b); err != nil {
			c.log.Warn("system manifest copy failed; retried later", "system", id, "target", t, "err", err)
			failed = append(failed, t)
		}
	}
	return failed
}

// retryUnsettled settles what a previous failure or process left: runs
// committing, failing or removing, copies pending, failed runs' backups.
func (c *Coordinator) retryUnsettled(ctx context.Context) { c.recover(ctx) }

// cleanSnapshots deletes the snapshots earlier system backups took of the
// volumes of run id: the next incremental backup needs only the newest.
func (c *Coordinator) cleanSnapshots(ctx context.Context, id string, log *slog.Logger) {
	r, err := c.st.run(id)
	if err != nil || r.Config == nil {
		return
	}
	keep := map[string]bool{}
	for _, a := range r.Acks {
		keep[a.Agent+"/"+a.Volume+"@"+a.Snapshot] = true
	}
	for _, v := range r.Config.Volumes {
		cl, err := c.client(v.Agent)
		if err != nil {
			continue
		}
		var snaps []blockdev.SnapshotInfo
		if err := cl.Do(ctx, http.MethodGet, "/v1/volumes/"+v.Name+"/snapshots", nil, &snaps); err != nil {
			continue
		}
		for _, s := range snaps {
			// Only a system backup's own snapshots: sys-<id> with
			// an id of the form this coordinator makes, never a
			// user's sys-before-upgrade.
			sys, ok := strings.CutPrefix(s.Name, snapshotPrefix)
			if !ok || !validID(sys) || keep[v.Agent+"/"+v.Name+"@"+s.Name] {
				continue
			}
			if err := cl.Do(ctx, http.MethodDelete, "/v1/volumes/"+v.Name+"/snapshots/"+s.Name, nil, nil); err != nil {
				log.Warn("delete an old system backup snapshot", "volume", v.Name, "snapshot", s.Name, "err", err)
			}
		}
	}
}
