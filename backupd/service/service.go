package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
	"github.com/strata-block/strata/internal/atomicfile"
	"github.com/strata-block/strata/plugins"
)

// Config is what the service needs from the server.
type Config struct {
	// Manager holds the volumes (agent.Manager).
	Manager *blockdev.Manager
	// Targets opens the registered targets.
	Targets *targets.Service
	// Attached reports whether a volume is attached on the host
	// (agent.Attached); restore refuses to overwrite an attached volume.
	Attached func(volume string) bool
	// Exclusive, if set, takes an existing volume for a restore into it
	// (agent.Exclusive): it refuses one that is in use (attached, or open
	// through NBD or its FUSE file), which must not change under its
	// users, and the restore calls release when it ends.
	Exclusive func(volume string) (release func(), err error)
	// VolumeTarget returns a volume's backup target, "" for the default
	// target (agent.VolumeTarget); nil: every volume uses the default.
	VolumeTarget func(volume string) string
	// DataDir holds the per-target index caches.
	DataDir string
	// Key encrypts new backups and decrypts encrypted ones; nil: none.
	Key *backupd.Key
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// MaxDuration bounds every volume backup (BackupOptions.MaxDuration;
	// default backupd.DefaultMaxDuration); GC refuses a grace that is not
	// longer.
	MaxDuration time.Duration
	// AllowUnencrypted lets a service with a Key restore and verify
	// backups the key does not authenticate too: unencrypted ones, and
	// encrypted ones without a manifest MAC
	// (backupd.Options.AllowUnencrypted).
	AllowUnencrypted bool
	// GCMargin is GCOptions.Margin (default 15 minutes): how much longer
	// than MaxDuration a GC grace must be.
	GCMargin time.Duration
	// ResumeKeep is how long the volume of a restore killed with the
	// process is kept, out of use, for a rerun of the restore to resume
	// (default DefaultResumeKeep); then it is removed.
	ResumeKeep time.Duration
}

// DefaultResumeKeep is Config.ResumeKeep's default.
const DefaultResumeKeep = 24 * time.Hour

// Service serves the backup routes. Create it with New.
type Service struct {
	cfg Config
	log *slog.Logger

	// ctx bounds detached jobs (wait: false); Close cancels it and waits.
	ctx    context.Context
	cancel context.CancelFunc
	jobs   sync.WaitGroup

	// mux serves the agent's own routes: volumes and snapshots are created
	// and removed through them, so the agent's view (its FUSE files)
	// follows.
	mux *http.ServeMux

	mu   sync.Mutex
	busy map[string]string // volume -> what runs on it ("backup", "restore")
	// kept holds the volumes of interrupted restores kept for a rerun to
	// resume (recoverInterrupted), under mu.
	kept map[string]*keptRestore

	// reusableHook, if set (tests), runs in reusable once the target's
	// newest backup is known.
	reusableHook func()
}

// New returns the service; it does no I/O.
func New(cfg Config) *Service {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Attached == nil {
		cfg.Attached = func(string) bool { return false }
	}
	if cfg.VolumeTarget == nil {
		cfg.VolumeTarget = func(string) string { return "" }
	}
	if cfg.ResumeKeep <= 0 {
		cfg.ResumeKeep = DefaultResumeKeep
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{cfg: cfg, log: log, ctx: ctx, cancel: cancel, busy: map[string]string{}, kept: map[string]*keptRestore{}}
}

// Stopping cancels every backup, restore and verify, streamed or detached
// (agent.Stopper): the agent is shutting down.
func (s *Service) Stopping() { s.cancel() }

// Close cancels detached backups and waits for them to stop.
func (s *Service) Close() error {
	s.cancel()
	s.mu.Lock()
	for _, k := range s.kept {
		k.timer.Stop()
	}
	s.mu.Unlock()
	s.jobs.Wait()
	return nil
}

// CreateRequest is the body of POST /v1/backups.
type CreateRequest struct {
	Volume string `json:"volume"`
	// Target is the target's name; "" for the volume's target (its
	// setting), else the default target.
	Target string `json:"target,omitempty"`
	// Snapshot is the snapshot to back up; "" takes a new one named
	// backup-<UTC time>.
	Snapshot string `json:"snapshot,omitempty"`
	// Full uploads every chunk again (heals damaged chunks).
	Full bool `json:"full,omitempty"`
	// Tags are recorded in the backup's manifest (the coordinator's system
	// backup id and fencing token): at most 16, keys matching
	// [a-z0-9._-]{1,64}, values of at most 256 bytes.
	Tags map[string]string `json:"tags,omitempty"`
	// Policy is PolicyAlways ("" too) or PolicyIfUnchanged.
	Policy string `json:"policy,omitempty"`
	// Wait false answers {"event":"accepted"} at once and runs the backup
	// detached from the request; nil or true streams progress until done.
	Wait *bool `json:"wait,omitempty"`
}

// Backup policies (CreateRequest.Policy).
const (
	// PolicyAlways takes a new backup.
	PolicyAlways = "always"
	// PolicyIfUnchanged answers the newest backup of the volume on the
	// target, marked Reused, instead of backing up, when that backup's
	// snapshot still exists and changed-block tracking reports no extent
	// written from it to the named Snapshot, or to a snapshot taken for
	// the comparison (then deleted), as a backup would take it.
	// Otherwise it backs up as PolicyAlways. A reused backup keeps the tags
	// it was made with.
	PolicyIfUnchanged = "if-unchanged"
)

// Limits on CreateRequest.Tags.
const (
	maxTags        = 16
	maxTagKeyLen   = 64
	maxTagValueLen = 256
)

// validTagKey reports whether k matches [a-z0-9._-]{1,64}.
func validTagKey(k string) bool {
	if k == "" || len(k) > maxTagKeyLen {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validate checks what a backup request says, before anything is done.
func (req *CreateRequest) validate() error {
	if req.Volume == "" {
		return fmt.Errorf("backup: no volume named: %w", blockdev.ErrInvalidArgument)
	}
	switch req.Policy {
	case "", PolicyAlways, PolicyIfUnchanged:
	default:
		return fmt.Errorf("backup of volume %q: policy %q: want %q or %q: %w", req.Volume, req.Policy, PolicyAlways, PolicyIfUnchanged, blockdev.ErrInvalidArgument)
	}
	if req.Policy == PolicyIfUnchanged && req.Full {
		return fmt.Errorf("backup of volume %q: full and policy %q contradict each other (full re-uploads every chunk, %s may upload none): %w", req.Volume, PolicyIfUnchanged, PolicyIfUnchanged, blockdev.ErrInvalidArgument)
	}
	if len(req.Tags) > maxTags {
		return fmt.Errorf("backup of volume %q: %d tags, at most %d: %w", req.Volume, len(req.Tags), maxTags, blockdev.ErrInvalidArgument)
	}
	for _, k := range slices.Sorted(maps.Keys(req.Tags)) {
		if !validTagKey(k) {
			return fmt.Errorf("backup of volume %q: tag key %q: must match [a-z0-9._-]{1,%d}: %w", req.Volume, k, maxTagKeyLen, blockdev.ErrInvalidArgument)
		}
		if v := req.Tags[k]; len(v) > maxTagValueLen {
			return fmt.Errorf("backup of volume %q: tag %q: value of %d bytes, at most %d: %w", req.Volume, k, len(v), maxTagValueLen, blockdev.ErrInvalidArgument)
		}
	}
	return nil
}

// RestoreRequest is the body of POST /v1/backups/{id}/restore.
type RestoreRequest struct {
	// To is the volume to restore into: created with the backup's size if
	// it does not exist, else it must be detached and of that size, and
	// Overwrite set.
	To     string `json:"to"`
	Target string `json:"target,omitempty"`
	// Overwrite allows restoring into an existing volume, whose content is
	// replaced; without it an existing To is refused (exists), so that a
	// mistyped name never costs a volume. (Not needed to resume an
	// interrupted restore into the volume it created.)
	Overwrite bool `json:"overwrite,omitempty"`
}

// CompareRequest is the body of POST /v1/backups/{id}/compare.
type CompareRequest struct {
	// To is the volume to compare with the backup.
	To     string `json:"to"`
	Target string `json:"target,omitempty"`
}

// CompareResult says whether a volume holds exactly a backup's data: the
// digest of the volume's head, computed as the backup's was, equals the
// backup's.
type CompareResult struct {
	ID        string `json:"id"`
	To        string `json:"to"`
	Identical bool   `json:"identical"`
	Digest    string `json:"digest"` // the volume's; "" if the sizes differ
}

// VerifyRequest is the body of POST /v1/backups/{id}/verify.
type VerifyRequest struct {
	Target   string `json:"target,omitempty"`
	ReadData bool   `json:"read_data,omitempty"`
}

// PruneRequest is the body of POST /v1/backups/prune.
type PruneRequest struct {
	Volume   string `json:"volume,omitempty"`
	Target   string `json:"target,omitempty"`
	KeepLast int    `json:"keep_last,omitempty"`
	// KeepWithin is a Go duration ("36h") or a number of days ("7d").
	KeepWithin string `json:"keep_within,omitempty"`
	DryRun     bool   `json:"dry_run,omitempty"`
}

// GCRequest is the body of POST /v1/backups/gc.
type GCRequest struct {
	// Target is the target to collect ("" for every registered target).
	Target string `json:"target,omitempty"`
	// Grace (Go duration or "2d") overrides the engine's default: a pack
	// or page unreferenced at one run is deleted only by a run at least
	// Grace later. It must be longer than any backup's run time.
	Grace  string `json:"grace,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// GCResult is one target's garbage collection.
type GCResult struct {
	Target string            `json:"target"`
	Report *backupd.GCReport `json:"report"`
}

// Backup describes one backup on one target.
type Backup struct {
	ID          string    `json:"id"`
	Volume      string    `json:"volume"`
	Snapshot    string    `json:"snapshot"`
	Parent      string    `json:"parent,omitempty"`
	Created     time.Time `json:"created"`
	Size        int64     `json:"size"`
	Digest      string    `json:"digest"`
	Target      string    `json:"target"`
	ManifestKey string    `json:"manifest_key"`
	Encrypted   bool      `json:"encrypted,omitempty"`
	// TargetURL is the target's URL in the registry (never credentials).
	TargetURL string `json:"target_url,omitempty"`
	// Tags are the tags recorded in the manifest; absent in lists.
	Tags map[string]string `json:"tags,omitempty"`
	// Reused is set when a backup with policy "if-unchanged" answered this
	// existing backup instead of taking a new one.
	Reused bool `json:"reused,omitempty"`
	// Stats are the run's counters (bytes_uploaded, ...); absent in lists.
	*backupd.Stats
}

// RestoreResult is the result of a restore.
type RestoreResult struct {
	ID           string `json:"id"`
	Target       string `json:"target"`
	Volume       string `json:"volume"` // the backed-up volume
	To           string `json:"to"`
	Created      bool   `json:"created"` // To was created by the restore
	Digest       string `json:"digest"`
	BytesWritten int64  `json:"bytes_written"`
	BytesFetched int64  `json:"bytes_fetched"`
	// ResumedBytes is how much of the volume an interrupted run of this
	// restore had restored: read back and checked, not fetched again.
	ResumedBytes int64 `json:"resumed_bytes,omitempty"`
}

// VerifyResult is the result of a verify: OK false when anything is bad.
type VerifyResult struct {
	ID     string                `json:"id"`
	Target string                `json:"target"`
	Volume string                `json:"volume"`
	OK     bool                  `json:"ok"`
	Error  string                `json:"error,omitempty"`
	Report *backupd.VerifyReport `json:"report"`
}

// PruneResult is what prune kept and deleted on one target.
type PruneResult struct {
	Target  string               `json:"target"`
	Kept    []backupd.BackupInfo `json:"kept"`
	Deleted []backupd.BackupInfo `json:"deleted"`
	// Held were kept because a system backup holds them; Future because
	// they are dated in the future (a clock ahead, a damaged date); both
	// count towards no rule. Skipped manifests do not load: neither kept
	// nor deleted (backupd.PruneResult).
	Held    []backupd.BackupInfo      `json:"held,omitempty"`
	Future  []backupd.BackupInfo      `json:"future,omitempty"`
	Skipped []backupd.SkippedManifest `json:"skipped,omitempty"`
}

// Event is one line of an NDJSON answer.
type Event struct {
	// Event is "accepted", "progress", "done" or "error".
	Event string `json:"event"`
	// Progress fields (op, volume, phase, bytes_total, ...) are inline in
	// progress events.
	*backupd.Progress
	Snapshot string         `json:"snapshot,omitempty"` // accepted: the snapshot being backed up
	Backup   *Backup        `json:"backup,omitempty"`
	Restore  *RestoreResult `json:"restore,omitempty"`
	Verify   *VerifyResult  `json:"verify,omitempty"`
	Error    string         `json:"error,omitempty"`
	Code     string         `json:"code,omitempty"`
}

// classed adds the blockdev sentinel matching an engine or target error,
// so the API's error codes (not_found, invalid, corrupt, in_use) apply.
type classed struct {
	err   error
	class error
}

func (e *classed) Error() string   { return e.err.Error() }
func (e *classed) Unwrap() []error { return []error{e.err, e.class} }

func classify(err error) error {
	if err == nil {
		return nil
	}
	var class error
	switch {
	case errors.Is(err, blockdev.ErrNotFound), errors.Is(err, blockdev.ErrInvalidArgument),
		errors.Is(err, blockdev.ErrInvalidName), errors.Is(err, blockdev.ErrInUse), errors.Is(err, blockdev.ErrExists):
		return err
	case errors.Is(err, backupd.ErrCorrupt), errors.Is(err, backupd.ErrMissing), errors.Is(err, backupd.ErrMismatch):
		// Before plugins.ErrNotFound: a pack missing under a backup
		// wraps both, and is damage, not an unknown name.
		class = blockdev.ErrCorrupt
	case errors.Is(err, plugins.ErrNotFound):
		class = blockdev.ErrNotFound
	case errors.Is(err, backupd.ErrInvalid), errors.Is(err, backupd.ErrKey):
		class = blockdev.ErrInvalidArgument
	case errors.Is(err, backupd.ErrHeld), errors.Is(err, backupd.ErrBusy), errors.Is(err, backupd.ErrLeaseLost):
		class = blockdev.ErrInUse
	default:
		return err
	}
	return &classed{err: err, class: class}
}

// repo is one opened target.
type repo struct {
	name string
	url  string // the registry's URL, without any user information
	t    plugins.Target
	r    *backupd.Repository
}

func (p *repo) close() { _ = p.t.Close() }

// open opens target name ("" for the default target).
func (s *Service) open(ctx context.Context, name string) (*repo, error) {
	var (
		reg targets.Target
		err error
	)
	if name == "" {
		reg, err = s.cfg.Targets.Registry().Default()
	} else {
		reg, err = s.cfg.Targets.Registry().Get(name)
	}
	if err != nil {
		return nil, err
	}
	name = reg.Name
	t, err := s.cfg.Targets.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	cache := filepath.Join(s.cfg.DataDir, "backup-cache", name)
	if err := os.MkdirAll(cache, 0o700); err != nil {
		_ = t.Close()
		return nil, fmt.Errorf("backup index cache of target %q: %w", name, err)
	}
	r := backupd.Open(t, &backupd.Options{Key: s.cfg.Key, AllowUnencrypted: s.cfg.AllowUnencrypted, Logger: s.log.With("target", name), CacheDir: cache})
	return &repo{name: name, url: publicURL(reg.URL), t: t, r: r}, nil
}

// publicURL is a target URL without user information, should one carry
// any: the registry keeps credentials in files, never in URLs, and this
// makes sure no answer shows them either.
func publicURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	return u.String()
}

// CheckTarget returns nil if target name is registered, else an error
// matching blockdev.ErrNotFound that names it: the agent's check of the
// targets volumes are set to back up to (agent.SetTargetCheck).
func (s *Service) CheckTarget(_ context.Context, name string) error {
	_, err := s.cfg.Targets.Registry().Get(name)
	return err
}

// targetNames is name if set, else every registered target.
func (s *Service) targetNames(name string) ([]string, error) {
	if name != "" {
		if _, err := s.cfg.Targets.Registry().Get(name); err != nil {
			return nil, err
		}
		return []string{name}, nil
	}
	var out []string
	for _, t := range s.cfg.Targets.Registry().List() {
		out = append(out, t.Name)
	}
	return out, nil
}

// find opens the target holding backup id (on target, or on any
// registered target) and returns it with the manifest key.
func (s *Service) find(ctx context.Context, id, target string) (*repo, string, error) {
	names, err := s.targetNames(target)
	if err != nil {
		return nil, "", err
	}
	var failed []error // targets that could not be searched
	for _, n := range names {
		p, err := s.open(ctx, n)
		if err == nil {
			var key string
			if key, err = p.r.FindBackup(ctx, id); err == nil {
				return p, key, nil
			}
			p.close()
			if errors.Is(err, plugins.ErrNotFound) {
				continue
			}
		}
		err = fmt.Errorf("target %q: %w", n, err)
		if target != "" || ctx.Err() != nil {
			return nil, "", err
		}
		// One unreachable target must not hide the backups of the others.
		s.log.Warn("backup lookup: target unusable; searching the others", "id", id, "err", err)
		failed = append(failed, err)
	}
	if target != "" {
		return nil, "", fmt.Errorf("backup %s on target %q: %w", id, target, blockdev.ErrNotFound)
	}
	if len(failed) > 0 {
		return nil, "", fmt.Errorf("backup %s is on no target that could be searched: %w", id, errors.Join(failed...))
	}
	return nil, "", fmt.Errorf("backup %s on any target: %w", id, blockdev.ErrNotFound)
}

// claim marks volume busy with op; the returned func releases it.
func (s *Service) claim(volume, op string) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.busy[volume]; ok {
		return nil, fmt.Errorf("volume %q: a %s is running on it: %w", volume, cur, blockdev.ErrInUse)
	}
	s.busy[volume] = op
	return func() {
		s.mu.Lock()
		delete(s.busy, volume)
		s.mu.Unlock()
	}, nil
}

func fromManifest(p *repo, key string, m *backupd.Manifest) *Backup {
	return &Backup{ID: m.ID, Volume: m.Volume, Snapshot: m.Snapshot, Parent: m.Parent, Created: m.Created,
		Size: m.Size, Digest: m.Digest, Target: p.name, TargetURL: p.url, ManifestKey: key, Encrypted: m.Encrypted,
		Tags: maps.Clone(m.Tags)}
}

// Routes adds the backup routes to mux.
func (s *Service) Routes(mux *http.ServeMux, writeErr func(http.ResponseWriter, error), writeJSON func(http.ResponseWriter, int, any)) {
	s.mux = mux
	fail := func(w http.ResponseWriter, err error) { writeErr(w, classify(err)) }
	decode := func(r *http.Request, v any) error {
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil && err != io.EOF {
			return fmt.Errorf("request body: %v: %w", err, blockdev.ErrInvalidArgument)
		}
		return nil
	}
	codeOf := func(err error) string {
		_, code := agent.ErrorCode(classify(err))
		return code
	}
	// emitEnd ends a stream: an error event for err, else done.
	emitEnd := func(emit func(Event), err error, done Event) {
		if err != nil {
			emit(Event{Event: "error", Error: err.Error(), Code: codeOf(err)})
			return
		}
		emit(done)
	}

	mux.HandleFunc("POST /v1/backups", func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		job, err := s.prepareBackup(r.Context(), req)
		if err != nil {
			fail(w, err)
			return
		}
		if req.Wait != nil && !*req.Wait {
			s.jobs.Add(1)
			go func() {
				defer s.jobs.Done()
				b, err := job.run(s.ctx, nil)
				if err != nil {
					s.log.Error("detached backup failed", "volume", req.Volume, "snapshot", job.snap, "target", job.p.name, "err", err)
					return
				}
				s.log.Info("detached backup committed", "volume", b.Volume, "id", b.ID, "target", b.Target)
			}()
			s.writeStream(w, r, func(ctx context.Context, emit func(Event)) {
				emit(Event{Event: "accepted", Snapshot: job.snap})
			})
			return
		}
		s.writeStream(w, r, func(ctx context.Context, emit func(Event)) {
			b, err := job.run(ctx, progressTo(ctx, emit))
			emitEnd(emit, err, Event{Event: "done", Backup: b})
		})
	})

	mux.HandleFunc("GET /v1/backups", func(w http.ResponseWriter, r *http.Request) {
		out, err := s.list(r.Context(), r.URL.Query().Get("volume"), r.URL.Query().Get("target"))
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})

	mux.HandleFunc("GET /v1/backups/{id}", func(w http.ResponseWriter, r *http.Request) {
		p, key, err := s.find(r.Context(), r.PathValue("id"), r.URL.Query().Get("target"))
		if err != nil {
			fail(w, err)
			return
		}
		defer p.close()
		m, err := p.r.LoadManifest(r.Context(), key)
		if err != nil {
			fail(w, fmt.Errorf("backup %s on target %q: %w", r.PathValue("id"), p.name, err))
			return
		}
		b := fromManifest(p, key, m)
		b.Stats = &m.Stats
		writeJSON(w, http.StatusOK, b)
	})

	mux.HandleFunc("POST /v1/backups/{id}/restore", func(w http.ResponseWriter, r *http.Request) {
		var req RestoreRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		job, err := s.prepareRestore(r.Context(), r.PathValue("id"), req)
		if err != nil {
			fail(w, err)
			return
		}
		s.writeStream(w, r, func(ctx context.Context, emit func(Event)) {
			res, err := job.run(ctx, progressTo(ctx, emit))
			emitEnd(emit, err, Event{Event: "done", Restore: res})
		})
	})

	mux.HandleFunc("POST /v1/backups/{id}/compare", func(w http.ResponseWriter, r *http.Request) {
		var req CompareRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		res, err := s.compare(r.Context(), r.PathValue("id"), req)
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})

	mux.HandleFunc("POST /v1/backups/{id}/verify", func(w http.ResponseWriter, r *http.Request) {
		var req VerifyRequest
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		id := r.PathValue("id")
		p, key, err := s.find(r.Context(), id, req.Target)
		if err != nil {
			fail(w, err)
			return
		}
		s.writeStream(w, r, func(ctx context.Context, emit func(Event)) {
			defer p.close()
			volume, _, _ := backupd.ParseManifestKey(key)
			rep, err := p.r.Verify(ctx, []string{key}, backupd.VerifyOptions{ReadData: req.ReadData, Progress: progressTo(ctx, emit)})
			if rep == nil {
				if err == nil {
					err = errors.New("verify returned no report")
				}
				emit(Event{Event: "error", Error: fmt.Sprintf("verify backup %s on target %q: %v", id, p.name, err), Code: codeOf(err)})
				return
			}
			res := &VerifyResult{ID: id, Target: p.name, Volume: volume, OK: err == nil && rep.OK(), Report: rep}
			if err != nil {
				res.Error = err.Error()
			} else if !rep.OK() {
				res.Error = "verify found damage"
			}
			s.log.Info("backup verified", "id", id, "target", p.name, "ok", res.OK, "read_data", req.ReadData)
			emit(Event{Event: "done", Verify: res})
		})
	})

	mux.HandleFunc("DELETE /v1/backups/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		p, key, err := s.find(r.Context(), id, r.URL.Query().Get("target"))
		if err != nil {
			fail(w, err)
			return
		}
		defer p.close()
		volume, _, err := backupd.ParseManifestKey(key)
		if err == nil {
			err = p.r.Delete(r.Context(), volume, id)
		}
		if err != nil {
			fail(w, fmt.Errorf("delete backup %s on target %q: %w", id, p.name, err))
			return
		}
		s.log.Info("backup deleted", "id", id, "volume", volume, "target", p.name)
		w.WriteHeader(http.StatusNoContent)
	})

	mux.HandleFunc("POST /v1/backups/gc", jsonCall(decode, fail, writeJSON, s.gc))
	mux.HandleFunc("POST /v1/backups/prune", jsonCall(decode, fail, writeJSON, s.prune))

	// The agent's own routes are in mux already (it adds them first).
	s.recoverInterrupted(s.ctx)
}

// backupJob is a validated backup request with its target open.
type backupJob struct {
	s      *Service
	p      *repo
	volume string
	snap   string
	took   bool // the job took snap (deleted if the backup fails)
	full   bool
	tags   map[string]string
	done   func()
	// reused is the existing backup that answers the request (policy
	// if-unchanged), nil when a backup is to run.
	reused *Backup
}

// prepareBackup checks the request, claims the volume, opens the target
// and takes the snapshot if none was named. The job owns the target.
func (s *Service) prepareBackup(ctx context.Context, req CreateRequest) (*backupJob, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	info, err := s.cfg.Manager.Volume(ctx, req.Volume)
	if err != nil {
		return nil, fmt.Errorf("backup of volume %q: %w", req.Volume, err)
	}
	done, err := s.claim(req.Volume, "backup")
	if err != nil {
		return nil, err
	}
	target, setting := req.Target, false
	if target == "" {
		target = s.cfg.VolumeTarget(req.Volume)
		setting = target != ""
	}
	p, err := s.open(ctx, target)
	if err != nil {
		done()
		if setting {
			return nil, fmt.Errorf("backup of volume %q to its target %q (the volume's setting; change it with strata volume set): %w", req.Volume, target, err)
		}
		return nil, fmt.Errorf("backup of volume %q: %w", req.Volume, err)
	}
	fail := func(err error) (*backupJob, error) {
		p.close()
		done()
		return nil, fmt.Errorf("backup of volume %q: %w", req.Volume, err)
	}
	snap := req.Snapshot
	if snap == "" {
		// Taken before if-unchanged compares: through the agent, which
		// freezes a filesystem it mounted, so writes still in its page
		// cache count as changes, as they would in the backup.
		snap = takenSnapshotName(time.Now())
		if err := s.agentCall(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(req.Volume)+"/snapshots", map[string]string{"name": snap}); err != nil {
			return fail(fmt.Errorf("snapshot %q: %w", snap, err))
		}
		s.log.Info("snapshot taken for backup", "volume", req.Volume, "snapshot", snap)
		if info, err = s.cfg.Manager.Volume(ctx, req.Volume); err != nil {
			s.dropTakenSnapshot(ctx, req.Volume, snap, "a backup not run")
			return fail(err)
		}
	} else if _, ok := info.Snapshot(snap); !ok {
		return fail(fmt.Errorf("snapshot %q: %w", snap, blockdev.ErrNotFound))
	}
	job := &backupJob{s: s, p: p, volume: req.Volume, snap: snap, took: req.Snapshot == "", full: req.Full, tags: req.Tags, done: done}
	if req.Policy == PolicyIfUnchanged {
		b, err := s.reusable(ctx, p, info, snap)
		if job.took && (err != nil || b != nil) {
			// Not backed up: the snapshot taken for it goes (it holds
			// no change since the reused backup's).
			s.dropTakenSnapshot(ctx, req.Volume, snap, "a backup not run")
		}
		if err == nil && b != nil {
			job.snap, job.took, job.reused = b.Snapshot, false, b
		}
		if err != nil {
			return fail(err)
		}
	}
	return job, nil
}

// reusable returns the newest backup of volume info.Name on p if the
// volume has not changed from its snapshot to snapshot snap, else nil:
// policy if-unchanged.
func (s *Service) reusable(ctx context.Context, p *repo, info blockdev.VolumeInfo, snap string) (*Backup, error) {
	log := s.log.With("volume", info.Name, "target", p.name, "policy", PolicyIfUnchanged)
	latest, err := p.r.Latest(ctx, info.Name)
	if errors.Is(err, plugins.ErrNotFound) {
		log.Info("no earlier backup to reuse")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("newest backup on target %q: %w", p.name, err)
	}
	if s.reusableHook != nil {
		s.reusableHook()
	}
	if !backupd.SameSnapshot(info, latest) {
		// Gone, or another snapshot given its name since (or one the
		// manifest does not identify): what changed since it says
		// nothing about what changed since the backup.
		log.Info("newest backup's snapshot is gone; backing up", "id", latest.ID, "snapshot", latest.Snapshot)
		return nil, nil
	}
	size := info.Size
	if si, ok := info.Snapshot(snap); ok {
		size = si.Size
	}
	if size != latest.Size {
		// Grown: the changed blocks do not show it.
		log.Info("volume size changed since the newest backup; backing up", "id", latest.ID, "backup_size", latest.Size, "size", size)
		return nil, nil
	}
	if snap != latest.Snapshot {
		changed, err := s.cfg.Manager.Changed(ctx, info.Name, latest.Snapshot, snap)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			log.Warn("changed blocks since the newest backup unknown; backing up", "id", latest.ID, "snapshot", latest.Snapshot, "to", snap, "err", err)
			return nil, nil
		}
		if len(changed) > 0 {
			log.Info("volume written since the newest backup; backing up", "id", latest.ID, "snapshot", latest.Snapshot, "extents", len(changed))
			return nil, nil
		}
	}
	// info was read before the target was listed (seconds on S3): a
	// snapshot deleted and made again under its name since, with writes
	// between, passed the checks above on its old identity, and the
	// changes were asked for by name. Both must still be the snapshots
	// identified.
	now, err := s.cfg.Manager.Volume(ctx, info.Name)
	if err != nil {
		return nil, err
	}
	was, _ := info.Snapshot(snap)
	is, ok := now.Snapshot(snap)
	if !backupd.SameSnapshot(now, latest) || !ok || !is.Created.Equal(was.Created) {
		log.Info("snapshots changed while the newest backup was compared; backing up", "id", latest.ID, "snapshot", latest.Snapshot, "to", snap)
		return nil, nil
	}
	m, err := p.r.LoadManifest(ctx, latest.Key)
	if err != nil {
		return nil, fmt.Errorf("backup %s to reuse, on target %q: %w", latest.ID, p.name, err)
	}
	b := fromManifest(p, latest.Key, m)
	b.Reused = true
	log.Info("volume unchanged since the newest backup; reusing it", "id", b.ID, "snapshot", b.Snapshot)
	return b, nil
}

func (j *backupJob) run(ctx context.Context, progress backupd.ProgressFunc) (*Backup, error) {
	defer j.done()
	defer j.p.close()
	if j.reused != nil {
		return j.reused, nil
	}
	start := time.Now()
	res, err := j.p.r.BackupVolume(ctx, j.s.cfg.Manager, j.volume, j.snap, backupd.BackupOptions{Full: j.full, Tags: j.tags, Progress: progress, MaxDuration: j.s.cfg.MaxDuration})
	if err != nil {
		j.s.log.Warn("backup failed", "volume", j.volume, "snapshot", j.snap, "target", j.p.name, "err", err)
		if j.took {
			// No backup names the snapshot taken for this one (a failed
			// Backup leaves no manifest): each retry would leave another,
			// holding its copy-on-write layer.
			j.s.dropTakenSnapshot(ctx, j.volume, j.snap, "a failed backup")
		}
		return nil, fmt.Errorf("backup of volume %q snapshot %q to target %q: %w", j.volume, j.snap, j.p.name, err)
	}
	b := fromManifest(j.p, res.ManifestKey, res.Manifest)
	b.Digest = res.Digest
	b.Stats = &res.Stats
	j.s.log.Info("backup committed", "volume", j.volume, "snapshot", j.snap, "target", j.p.name, "id", res.ID,
		"parent", b.Parent, "bytes_uploaded", res.BytesUploaded, "elapsed", time.Since(start).Round(time.Millisecond))
	if j.took {
		// Still under the volume's claim: no other backup of it runs.
		j.s.dropTakenSnapshots(ctx, j.volume, j.snap, j.p.name)
	}
	return b, nil
}

// takenSnapshotName names the snapshot a backup takes for itself at t:
// backup-<UTC time to the millisecond>.
func takenSnapshotName(t time.Time) string {
	return "backup-" + strings.ToLower(t.UTC().Format(takenSnapshotLayout))
}

const takenSnapshotLayout = "20060102-150405.000"

// isTakenSnapshot reports whether name is one takenSnapshotName makes
// (and not a user's backup-before-upgrade).
func isTakenSnapshot(name string) bool {
	ts, ok := strings.CutPrefix(name, "backup-")
	if !ok {
		return false
	}
	t, err := time.Parse(takenSnapshotLayout, ts)
	return err == nil && takenSnapshotName(t) == name
}

// dropTakenSnapshots deletes the snapshots earlier backups of volume took
// for themselves (isTakenSnapshot) once a backup of snapshot snap, also
// taken for itself, is committed: each held a copy-on-write layer for
// good, so a volume backed up daily grew its chain by a layer a day. An
// incremental needs only the snapshot of the newest backup on its target,
// so those of the newest backup of the volume on every other registered
// target stay (on target, the one just made is the newest), as do
// snapshots newer than snap. When a target cannot be asked, nothing is
// deleted (a kept snapshot costs space; a deleted one makes that target's
// next backup a full one). A failure is logged: the backup is committed
// either way.
func (s *Service) dropTakenSnapshots(ctx context.Context, volume, snap, target string) {
	// Bounded: the volume stays claimed meanwhile, and an unreachable
	// target must not keep it so (nothing is deleted then).
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	log := s.log.With("volume", volume, "snapshot", snap)
	info, err := s.cfg.Manager.Volume(ctx, volume)
	if err != nil {
		log.Warn("old backup snapshots left: volume", "err", err)
		return
	}
	cur, ok := info.Snapshot(snap)
	if !ok {
		return
	}
	names, err := s.targetNames("")
	if err != nil {
		log.Warn("old backup snapshots left: targets", "err", err)
		return
	}
	keep := map[string]bool{snap: true}
	for _, n := range names {
		if n == target {
			continue
		}
		p, err := s.open(ctx, n)
		if err != nil {
			log.Warn("old backup snapshots left: a target's newest backup unknown", "target", n, "err", err)
			return
		}
		latest, err := p.r.Latest(ctx, volume)
		p.close()
		if errors.Is(err, plugins.ErrNotFound) {
			continue
		}
		if err != nil {
			log.Warn("old backup snapshots left: a target's newest backup unknown", "target", n, "err", err)
			return
		}
		keep[latest.Snapshot] = true
	}
	for _, si := range info.Snapshots {
		if keep[si.Name] || !isTakenSnapshot(si.Name) || !si.Created.Before(cur.Created) {
			continue
		}
		if err := s.deleteSnapshot(ctx, volume, si.Name); err != nil {
			log.Warn("delete an old backup snapshot", "old", si.Name, "err", err)
			continue
		}
		log.Info("old backup snapshot deleted", "old", si.Name)
	}
}

// compare reads volume req.To whole and tells whether it holds exactly
// backup id's data (a system restore run again uses it before it skips a
// volume an earlier run restored).
func (s *Service) compare(ctx context.Context, id string, req CompareRequest) (*CompareResult, error) {
	if req.To == "" {
		return nil, fmt.Errorf("compare with backup %s: no volume (to): %w", id, blockdev.ErrInvalidArgument)
	}
	p, key, err := s.find(ctx, id, req.Target)
	if err != nil {
		return nil, err
	}
	defer p.close()
	m, err := p.r.LoadManifest(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("compare with backup %s on target %q: %w", id, p.name, err)
	}
	dev, release, err := s.cfg.Manager.Open(ctx, req.To)
	if err != nil {
		return nil, fmt.Errorf("compare with backup %s: volume %q: %w", id, req.To, err)
	}
	defer release()
	res := &CompareResult{ID: id, To: req.To}
	if dev.Size() != m.Size {
		return res, nil
	}
	if res.Digest, err = backupd.VolumeDigest(ctx, dev, m.ChunkSize); err != nil {
		return nil, fmt.Errorf("compare with backup %s: volume %q: %w", id, req.To, err)
	}
	res.Identical = res.Digest == m.Digest
	return res, nil
}

// restoreJob is a validated restore request.
type restoreJob struct {
	s       *Service
	p       *repo
	key     string
	m       *backupd.Manifest
	to      string
	created bool
	// createdAt identifies the volume restored into, with its name: its
	// creation time (zero if unknown).
	createdAt time.Time
	resumed   bool   // to is the volume an interrupted run of this restore created
	done      func() // ends the job: release, then the claim on the name
	// release ends the Exclusive hold only (nil if none, or if the hold
	// went to the kept volume of a failed restore: keepFailed).
	release func()
}

// endWith returns the job's done: it ends the hold the job has then, if
// any, and then the claim on the name (unclaim).
func (j *restoreJob) endWith(unclaim func()) func() {
	return func() {
		if j.release != nil {
			j.release()
		}
		unclaim()
	}
}

// prepareRestore finds the backup, checks the destination and creates it
// if it does not exist.
func (s *Service) prepareRestore(ctx context.Context, id string, req RestoreRequest) (*restoreJob, error) {
	if req.To == "" {
		return nil, fmt.Errorf("restore of backup %s: no destination volume (to): %w", id, blockdev.ErrInvalidArgument)
	}
	p, key, err := s.find(ctx, id, req.Target)
	if err != nil {
		return nil, err
	}
	m, err := p.r.LoadManifest(ctx, key)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("restore of backup %s on target %q: %w", id, p.name, err)
	}
	done, err := s.claim(req.To, "restore")
	if err != nil {
		p.close()
		return nil, err
	}
	j := &restoreJob{s: s, p: p, key: key, m: m, to: req.To, done: done}
	fail := func(err error) (*restoreJob, error) {
		p.close()
		done()
		return nil, err
	}
	info, err := s.cfg.Manager.Volume(ctx, req.To)
	if k := s.takeKept(req.To); k != nil {
		switch {
		case err == nil && info.Created.Equal(k.created) && k.manifest == key && info.Size == m.Size:
			// The rerun of an interrupted restore: it resumes into the
			// volume the first run created, under the hold kept since.
			j.created, j.resumed, j.createdAt = true, true, k.created
			j.release = k.release
			j.done = j.endWith(done)
			return j, nil
		case err == nil && info.Created.Equal(k.created):
			// Another backup into the kept volume: it holds part of a
			// backup and nothing else; made again from scratch.
			j.createdAt = k.created
			if rerr := j.removeCreated(ctx); rerr != nil {
				s.retryKept(req.To, k)
				return fail(fmt.Errorf("restore of backup %s into volume %q: the volume holds an interrupted restore of another backup and could not be removed: %w", id, req.To, rerr))
			}
			j.createdAt = time.Time{}
			k.release()
			info, err = s.cfg.Manager.Volume(ctx, req.To)
		default:
			// Deleted (and maybe made again) since: not the kept volume.
			k.release()
		}
	}
	switch {
	case errors.Is(err, blockdev.ErrNotFound):
		// A state file left by a restore into an earlier volume of the
		// name describes nothing the new one holds.
		s.removeState(req.To)
		if err := s.markPending(req.To, time.Time{}); err != nil {
			return fail(fmt.Errorf("restore of backup %s into volume %q: %w", id, req.To, err))
		}
		if err := s.agentCall(ctx, http.MethodPost, "/v1/volumes", map[string]any{"name": req.To, "size": m.Size}); err != nil {
			s.clearPending(req.To)
			return fail(fmt.Errorf("restore of backup %s: create volume %q: %w", id, req.To, err))
		}
		j.created = true
		// The mark names the volume by its creation time too, so that the
		// next start removes this volume and never another of the name.
		if vi, err := s.cfg.Manager.Volume(ctx, req.To); err == nil {
			j.createdAt = vi.Created
			if err := s.markPending(req.To, vi.Created); err != nil {
				j.removeCreated(ctx)
				return fail(fmt.Errorf("restore of backup %s into volume %q: %w", id, req.To, err))
			}
		}
	case err != nil:
		return fail(fmt.Errorf("restore of backup %s into volume %q: %w", id, req.To, err))
	case s.cfg.Attached(req.To):
		return fail(fmt.Errorf("restore of backup %s: volume %q is attached; detach it first (an attached volume is never overwritten): %w", id, req.To, blockdev.ErrInUse))
	case info.Size != m.Size:
		return fail(fmt.Errorf("restore of backup %s: volume %q is %d bytes, the backup %d: restore into a new volume or one of the same size: %w", id, req.To, info.Size, m.Size, blockdev.ErrInvalidArgument))
	case !req.Overwrite:
		return fail(fmt.Errorf("restore of backup %s: volume %q exists; restoring into it replaces all its data: ask to overwrite it (--overwrite), or restore into a new volume: %w", id, req.To, blockdev.ErrExists))
	default:
		j.createdAt = info.Created
	}
	if s.cfg.Exclusive != nil {
		// Also a volume just created: its file is in the mount already.
		release, err := s.cfg.Exclusive(req.To)
		if err != nil {
			if j.created {
				j.removeCreated(ctx)
			}
			return fail(fmt.Errorf("restore of backup %s into volume %q (a volume in use is never overwritten): %w", id, req.To, err))
		}
		j.release = release
		j.done = j.endWith(done)
	}
	if !j.created {
		// Once taken: an existing volume the operator restores into is no
		// one's leftover.
		s.clearPending(req.To)
	}
	return j, nil
}

// removeCreated deletes the volume the restore created: it holds nothing
// else, and a half-restored volume must not be left behind. Only that very
// volume (createdAt): one deleted and made again under the name is left.
// Its pending mark and state file go with it; if the deletion fails, they
// stay and the next start tries again.
func (j *restoreJob) removeCreated(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	vi, err := j.s.cfg.Manager.Volume(ctx, j.to)
	switch {
	case errors.Is(err, blockdev.ErrNotFound), err == nil && !j.createdAt.IsZero() && !vi.Created.Equal(j.createdAt):
		// Gone already, or another volume of the name: not the restore's.
	case err == nil:
		err = j.s.deleteVolume(ctx, j.to)
	}
	if err != nil {
		j.s.log.Warn("remove partly restored volume", "volume", j.to, "err", err)
		return err
	}
	j.s.removeState(j.to)
	j.s.clearPending(j.to)
	return nil
}

// pendingDir holds an empty file per volume a restore created and has not
// finished restoring. A restore that fails removes its volume itself; one
// killed with the process leaves the mark, and the next start removes the
// half-restored volume (removeInterrupted).
const pendingDir = "restore-pending"

// markPending durably records that a restore is about to create vol (zero
// created) or has created it (the volume's creation time, which with the
// name identifies it).
func (s *Service) markPending(vol string, created time.Time) error {
	if s.cfg.DataDir == "" {
		return nil
	}
	dir := filepath.Join(s.cfg.DataDir, pendingDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	var b []byte
	if !created.IsZero() {
		b = []byte(created.UTC().Format(time.RFC3339Nano))
	}
	if err := atomicfile.Write(filepath.Join(dir, vol), b); err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	return nil
}

// clearPending removes vol's mark, durably: its restore finished, or its
// volume is gone or no leftover (a mark coming back after a crash could
// otherwise remove a volume at the next start).
func (s *Service) clearPending(vol string) error {
	if s.cfg.DataDir == "" {
		return nil
	}
	path := filepath.Join(s.cfg.DataDir, pendingDir, vol)
	if err := atomicfile.Remove(path); err != nil {
		s.log.Warn("restore mark", "volume", vol, "err", err)
		return fmt.Errorf("restore mark %s: %w", path, err)
	}
	return nil
}

// stateDir holds the state file of each volume's restore
// (RestoreOptions.StatePath), named by the destination volume: a restore
// killed with the process is resumed by its rerun.
const stateDir = "restore-state"

// statePath is the state file of a restore into vol ("" without DataDir).
func (s *Service) statePath(vol string) string {
	if s.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(s.cfg.DataDir, stateDir, vol)
}

// removeState removes the state file of a restore into vol, durably.
func (s *Service) removeState(vol string) {
	if p := s.statePath(vol); p != "" {
		if err := atomicfile.Remove(p); err != nil {
			s.log.Warn("restore state", "volume", vol, "err", err)
		}
	}
}

// keptRestore is the volume of a restore killed with the process (or
// failed: keepFailed), kept out of use (its Exclusive hold) for a rerun of
// the restore to resume until the timer removes it.
type keptRestore struct {
	created  time.Time // the volume's creation time: it and the name identify it
	manifest string    // the backup being restored
	release  func()    // ends the hold (a no-op without Exclusive)
	timer    *time.Timer
	taken    bool // by a restore (takeKept), under Service.mu: no longer the timer's
}

// retryKept puts k back as vol's kept volume, to be looked at again in a
// minute (its removal failed, or the name was busy).
func (s *Service) retryKept(vol string, k *keptRestore) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k.taken || (s.kept[vol] != nil && s.kept[vol] != k) {
		return // a restore took it meanwhile
	}
	s.kept[vol] = k
	k.timer.Reset(time.Minute)
}

// takeKept hands the kept volume vol, if any, to a restore into it: its
// timer no longer removes it.
func (s *Service) takeKept(vol string) *keptRestore {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kept[vol]
	if k != nil {
		k.timer.Stop()
		k.taken = true
		delete(s.kept, vol)
	}
	return k
}

// interruptedMark is a pending mark found at start.
type interruptedMark struct {
	vol     string
	created time.Time // the creation time it names
	ours    bool      // the volume of that name exists and has that creation time
}

// pendingMarks lists the pending marks left by restores the process was
// stopped during.
func (s *Service) pendingMarks(ctx context.Context) []interruptedMark {
	if s.cfg.DataDir == "" {
		return nil
	}
	ents, err := os.ReadDir(filepath.Join(s.cfg.DataDir, pendingDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("restore marks", "err", err)
	}
	var out []interruptedMark
	for _, e := range ents {
		vol := e.Name()
		if !blockdev.ValidName(vol) {
			continue
		}
		// Only the very volume the restore created: named by the mark's
		// creation time (a mark without one was written before the
		// volume existed, and names none).
		b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, pendingDir, vol))
		created, perr := time.Parse(time.RFC3339Nano, string(b))
		vi, verr := s.cfg.Manager.Volume(ctx, vol)
		out = append(out, interruptedMark{vol: vol, created: created, ours: err == nil && perr == nil && verr == nil && vi.Created.Equal(created)})
	}
	return out
}

// Start keeps the volumes of restores interrupted by the last stop for
// their reruns to resume (keep; agent.Starter): it runs before the agent
// serves NBD or FUSE, so that no client opens one first and writes to
// it (a kept volume is then restored from a start known to be its own).
func (s *Service) Start(ctx context.Context) {
	for _, m := range s.pendingMarks(ctx) {
		if m.ours {
			s.keep(m.vol, m.created)
		}
	}
}

// recoverInterrupted deals with the restores the process was stopped
// during, once the agent's routes are up (Routes). A volume one created
// (its pending mark names it by its creation time) that Start kept waits
// for a rerun; any other is removed: it holds part of a backup, and
// nobody was told the restore had succeeded. The state files of restores
// into existing volumes stay (their rerun resumes, checking what the
// first run wrote) until ResumeKeep old.
func (s *Service) recoverInterrupted(ctx context.Context) {
	if s.cfg.DataDir == "" {
		return
	}
	marked := map[string]bool{}
	for _, m := range s.pendingMarks(ctx) {
		marked[m.vol] = true
		s.mu.Lock()
		_, kept := s.kept[m.vol]
		s.mu.Unlock()
		switch {
		case kept:
			continue
		case !m.ours:
		default:
			if err := s.deleteVolume(ctx, m.vol); err != nil {
				// Tried once: the mark goes, so that a volume an operator
				// keeps is never removed at a later start.
				s.log.Error("a volume an interrupted restore created could not be removed; it holds part of a backup: delete it by hand", "volume", m.vol, "err", err)
			} else {
				s.log.Warn("removed a volume an interrupted restore created (it held part of a backup)", "volume", m.vol)
			}
		}
		s.removeState(m.vol)
		s.clearPending(m.vol)
	}
	states, _ := os.ReadDir(filepath.Join(s.cfg.DataDir, stateDir))
	for _, e := range states {
		if fi, err := e.Info(); err == nil && !marked[e.Name()] && time.Since(fi.ModTime()) > s.cfg.ResumeKeep {
			s.removeState(e.Name())
		}
	}
}

// keep keeps the volume vol (created at created) of an interrupted
// restore if its state file records progress younger than ResumeKeep and
// the volume can be taken out of use; it reports whether it did.
func (s *Service) keep(vol string, created time.Time) bool {
	path := s.statePath(vol)
	key, pages, err := backupd.RestoreStateOf(path)
	fi, serr := os.Stat(path)
	if err != nil || serr != nil || pages == 0 || !fi.ModTime().After(created) {
		// No progress, or progress of a restore into an earlier volume of
		// the name.
		return false
	}
	left := s.cfg.ResumeKeep - time.Since(fi.ModTime())
	if left <= 0 {
		return false
	}
	release := func() {}
	if s.cfg.Exclusive != nil {
		r, err := s.cfg.Exclusive(vol)
		if err != nil {
			// In use already (an NBD client came first): not kept out of
			// use, so not kept at all.
			s.log.Warn("the volume of an interrupted restore is in use; not kept for a rerun", "volume", vol, "err", err)
			return false
		}
		release = r
	}
	k := &keptRestore{created: created, manifest: key, release: release}
	s.mu.Lock()
	k.timer = time.AfterFunc(left, func() { s.expireKept(vol, k) })
	s.kept[vol] = k
	s.mu.Unlock()
	id := key
	if _, bid, err := backupd.ParseManifestKey(key); err == nil {
		id = bid
	}
	s.log.Warn("kept the volume of an interrupted restore for its rerun to resume: restore the same backup into it again, or delete it", "volume", vol, "backup", id, "until", time.Now().Add(left).UTC().Format(time.RFC3339))
	return true
}

// keepFailed keeps the volume a failed restore created, out of use, for a
// rerun to resume, as a start keeps one after a kill (keep): a target
// that stopped answering, a plugin that died, a damaged chunk a later
// backup stores again, or a cancelled wait must not cost what was
// restored of a large volume. Only if the restore's state file records
// progress of this very restore into this very volume, and not after a
// failure a rerun would meet again: a wrong whole-volume digest, a key
// that does not open the backup, its manifest gone. It reports until
// when (zero: the service is stopping, and the next start keeps it).
func (s *Service) keepFailed(j *restoreJob, err error) (time.Time, bool) {
	if errors.Is(err, backupd.ErrMismatch) || errors.Is(err, backupd.ErrKey) ||
		(errors.Is(err, plugins.ErrNotFound) && !errors.Is(err, backupd.ErrMissing)) || j.createdAt.IsZero() {
		return time.Time{}, false
	}
	key, pages, serr := backupd.RestoreStateOf(s.statePath(j.to))
	if serr != nil || pages == 0 || key != j.key {
		return time.Time{}, false
	}
	if vi, verr := s.cfg.Manager.Volume(context.WithoutCancel(s.ctx), j.to); verr != nil || !vi.Created.Equal(j.createdAt) {
		return time.Time{}, false // deleted (and maybe made again) underneath
	}
	release := j.release
	if release == nil {
		release = func() {}
	}
	j.release = nil // the kept volume's hold now, not the job's to end
	k := &keptRestore{created: j.createdAt, manifest: j.key, release: release}
	until := time.Now().Add(s.cfg.ResumeKeep)
	s.mu.Lock()
	if s.ctx.Err() != nil {
		// Stopping: the volume, its mark and its state stay for the
		// next start to keep, as for a restore the shutdown stopped
		// (Close has stopped the kept volumes' timers already, or is
		// about to).
		s.mu.Unlock()
		j.release = release
		return time.Time{}, true
	}
	k.timer = time.AfterFunc(s.cfg.ResumeKeep, func() { s.expireKept(j.to, k) })
	s.kept[j.to] = k
	s.mu.Unlock()
	s.log.Warn("kept the volume of a failed restore for its rerun to resume: restore the same backup into it again, or delete it", "volume", j.to, "backup", j.m.ID, "until", until.UTC().Format(time.RFC3339))
	return until, true
}

// expireKept removes the kept volume vol of an interrupted restore that
// no rerun took.
func (s *Service) expireKept(vol string, k *keptRestore) {
	if s.ctx.Err() != nil {
		return // stopping: the next start decides
	}
	done, err := s.claim(vol, "restore")
	if err != nil {
		s.retryKept(vol, k) // a restore or backup is being prepared on it
		return
	}
	defer done()
	s.mu.Lock()
	if k.taken || s.kept[vol] != k {
		s.mu.Unlock()
		return // taken by a restore
	}
	delete(s.kept, vol)
	s.mu.Unlock()
	s.log.Warn("removing the volume of an interrupted restore no rerun resumed", "volume", vol)
	j := &restoreJob{s: s, to: vol, createdAt: k.created}
	if err := j.removeCreated(s.ctx); err != nil {
		if s.ctx.Err() == nil {
			s.retryKept(vol, k) // kept out of use, and tried again
		}
		return
	}
	k.release()
}

// removeAndRelease removes the volume the job created, then ends its
// Exclusive hold on it (a deletion does not meet the hold; released first,
// the half-restored volume came back for a moment, its FUSE file and NBD
// opens with it, and a user of it could keep it from being deleted). The
// claim on the name stays until the deferred done: another restore must
// not take the name before the deletion.
func (j *restoreJob) removeAndRelease(ctx context.Context) {
	j.removeCreated(ctx)
	if j.release != nil {
		j.release() // idempotent: done calls it again
	}
}

func (j *restoreJob) run(ctx context.Context, progress backupd.ProgressFunc) (*RestoreResult, error) {
	defer j.done()
	defer j.p.close()
	s := j.s
	var res *backupd.RestoreResult
	err := func() error {
		dev, release, err := s.cfg.Manager.Open(ctx, j.to)
		if err != nil {
			return err
		}
		defer release()
		// The volume prepared, not one deleted and made again under its
		// name since (a deletion does not meet the hold).
		if vi, err := s.cfg.Manager.Volume(ctx, j.to); err != nil || (!j.createdAt.IsZero() && !vi.Created.Equal(j.createdAt)) {
			return fmt.Errorf("volume %q was deleted (and made again) while the restore was prepared: %w", j.to, blockdev.ErrInUse)
		}
		var err2 error
		state := s.statePath(j.to)
		if state != "" {
			if err := os.MkdirAll(filepath.Dir(state), 0o700); err != nil {
				s.log.Warn("restore state: a kill would restart this restore", "volume", j.to, "err", err)
				state = ""
			}
		}
		res, err2 = j.p.r.Restore(ctx, j.key, backupd.VolumeDestination{V: dev}, backupd.RestoreOptions{
			// A resumed volume may have been written to past the first
			// run's last checkpoint (it was served before the hold was
			// taken again at start): not known zero.
			DestZeroed: j.created && !j.resumed,
			StatePath:  state, Progress: progress})
		if err2 != nil {
			return err2
		}
		if res.Digest != j.m.Digest {
			return fmt.Errorf("restored digest %s, manifest %s: %w", res.Digest, j.m.Digest, backupd.ErrMismatch)
		}
		return nil
	}()
	if err != nil {
		if j.created {
			until, kept := time.Time{}, s.ctx.Err() != nil && s.statePath(j.to) != ""
			if !kept {
				until, kept = s.keepFailed(j, err)
			}
			switch {
			case kept && until.IsZero():
				// The agent is stopping: the volume, its mark and its
				// state stay for the next start to keep for a rerun to
				// resume.
				s.log.Warn("restore stopped by the shutdown; run it again after the restart to resume it", "id", j.m.ID, "to", j.to)
			case kept:
				err = fmt.Errorf("%w; the volume keeps what was restored, out of use, until %s: restore the same backup into it again to resume, or delete it", err, until.UTC().Format(time.RFC3339))
			default:
				j.removeAndRelease(ctx)
			}
		}
		s.log.Warn("restore failed", "id", j.m.ID, "to", j.to, "target", j.p.name, "err", err)
		return nil, fmt.Errorf("restore of backup %s (volume %q) into volume %q: %w", j.m.ID, j.m.Volume, j.to, err)
	}
	if j.created {
		if err := s.clearPending(j.to); err != nil {
			// Not a success: the next start would remove the volume.
			return nil, fmt.Errorf("restore of backup %s into volume %q finished, but its pending mark could not be removed, so the next start would remove the volume as a restore that never finished; remove the mark by hand to keep it: %w", j.m.ID, j.to, err)
		}
	}
	s.log.Info("backup restored", "id", j.m.ID, "volume", j.m.Volume, "to", j.to, "target", j.p.name)
	return &RestoreResult{ID: j.m.ID, Target: j.p.name, Volume: j.m.Volume, To: j.to, Created: j.created, Digest: j.m.Digest,
		BytesWritten: res.BytesWritten, BytesFetched: res.BytesFetched,
		ResumedBytes: j.m.PagesEnd(res.Resumed)}, nil
}

func (s *Service) list(ctx context.Context, volume, target string) ([]Backup, error) {
	out := []Backup{}
	err := s.eachRepo(ctx, target, func(p *repo) error {
		infos, err := p.r.List(ctx, volume)
		if err != nil {
			return fmt.Errorf("list backups on target %q: %w", p.name, err)
		}
		for _, bi := range infos {
			out = append(out, Backup{ID: bi.ID, Volume: bi.Volume, Snapshot: bi.Snapshot, Parent: bi.Parent,
				Created: bi.Created, Size: bi.Size, Digest: bi.Digest, Target: p.name, TargetURL: p.url, ManifestKey: bi.Key})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(out, func(a, b Backup) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// eachRepo opens target (every registered target when "") one at a time
// and calls fn with it, stopping at fn's first error.
func (s *Service) eachRepo(ctx context.Context, target string, fn func(p *repo) error) error {
	names, err := s.targetNames(target)
	if err != nil {
		return err
	}
	for _, n := range names {
		p, err := s.open(ctx, n)
		if err != nil {
			return err
		}
		err = fn(p)
		p.close()
		if err != nil {
			return err
		}
	}
	return nil
}

// eachRepoAll is eachRepo going on past a target that fails (prune and
// GC: one target that does not answer must not stop the others' upkeep);
// the error joins every failure.
func (s *Service) eachRepoAll(ctx context.Context, target string, fn func(p *repo) error) error {
	names, err := s.targetNames(target)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if ctx.Err() != nil {
			return errors.Join(append(errs, ctx.Err())...)
		}
		errs = append(errs, s.eachRepo(ctx, n, fn))
	}
	return errors.Join(errs...)
}

// ParseKeepWithin reads a Go duration ("36h") or a number of days ("7d").
func ParseKeepWithin(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		// Below the longest Duration (about 106751 days): converting a
		// larger float, or Inf or NaN, gives a garbage value.
		if err == nil && n >= 0 && n*24*float64(time.Hour) < float64(math.MaxInt64) {
			return time.Duration(n * 24 * float64(time.Hour)), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("keep-within %q: want a duration such as 36h or a number of days such as 7d: %w", s, blockdev.ErrInvalidArgument)
	}
	return d, nil
}

func (s *Service) prune(ctx context.Context, req PruneRequest) ([]PruneResult, error) {
	within, err := ParseKeepWithin(req.KeepWithin)
	if err != nil {
		return nil, err
	}
	out := []PruneResult{}
	err = s.eachRepoAll(ctx, req.Target, func(p *repo) error {
		res, err := p.r.Prune(ctx, backupd.PruneOptions{Volume: req.Volume, KeepLast: req.KeepLast, KeepWithin: within, DryRun: req.DryRun})
		if err != nil {
			return fmt.Errorf("target %q: %w", p.name, err)
		}
		pr := PruneResult{Target: p.name, Kept: res.Kept, Deleted: res.Deleted, Held: res.Held, Future: res.Future, Skipped: res.Skipped}
		if pr.Kept == nil {
			pr.Kept = []backupd.BackupInfo{}
		}
		if pr.Deleted == nil {
			pr.Deleted = []backupd.BackupInfo{}
		}
		s.log.Info("backups pruned", "target", p.name, "volume", req.Volume, "kept", len(pr.Kept), "deleted", len(pr.Deleted),
			"held", len(pr.Held), "future", len(pr.Future), "skipped", len(pr.Skipped), "dry_run", req.DryRun)
		out = append(out, pr)
		return nil
	})
	if err != nil {
		done := make([]string, len(out))
		for i, pr := range out {
			done[i] = fmt.Sprintf("%q: %d %s, %d kept", pr.Target, len(pr.Deleted), deletedWord(req.DryRun), len(pr.Kept))
		}
		return nil, partialErr("prune", err, done)
	}
	return out, nil
}

// deletedWord is how a report says deleted: dry runs delete nothing.
func deletedWord(dryRun bool) string {
	if dryRun {
		return "to delete"
	}
	return "deleted"
}

// partialErr is the error of an upkeep run over several targets (prune,
// GC) that failed on some: op, the failures on one line, then what was
// done on the others.
func partialErr(op string, err error, done []string) error {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if len(done) > 0 {
		msg += "; done on the other targets: " + strings.Join(done, "; ")
	}
	if op != "" {
		msg = op + ": " + msg
	}
	return &classed{err: errors.New(msg), class: err}
}

// progressInterval spaces progress events (about five a second).
const progressInterval = 200 * time.Millisecond

// progressTo returns a ProgressFunc that forwards events to emit at most
// every progressInterval, plus every phase change. The engine calls it from
// one goroutine at a time.
func progressTo(ctx context.Context, emit func(Event)) backupd.ProgressFunc {
	var (
		last  time.Time
		phase backupd.Phase
	)
	return func(p backupd.Progress) {
		now := time.Now()
		if p.Phase == phase && now.Sub(last) < progressInterval {
			return
		}
		last, phase = now, p.Phase
		if ctx.Err() == nil {
			emit(Event{Event: "progress", Progress: &p})
		}
	}
}

// streamWriteTimeout bounds the write of one event of a stream: a client
// that reads nothing for that long (a stopped CLI, a stuck pipe) is taken
// as gone and its job cancelled, rather than holding its volume busy with
// the job blocked in the write.
const streamWriteTimeout = time.Minute

// writeStream answers NDJSON: fn emits events, each written and flushed
// as one line. fn runs in the handler's goroutine; emit is safe to call
// from others. fn's context ends when the client goes away (or stops
// reading for streamWriteTimeout) or the service stops.
func (s *Service) writeStream(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, emit func(Event))) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	broken := false
	emit := func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			return
		}
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		if err := enc.Encode(e); err != nil {
			broken = true
			cancel()
			return
		}
		if err := rc.Flush(); err != nil {
			broken = true
			cancel()
		}
	}
	fn(ctx, emit)
}

// deleteVolume deletes volume vol through the agent's route (its FUSE
// files and holds follow).
func (s *Service) deleteVolume(ctx context.Context, vol string) error {
	return s.agentCall(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(vol), nil)
}

// dropTakenSnapshot deletes snapshot snap of volume vol, taken for a
// backup that did not use it (forWhat says which, in the log), even when
// ctx has ended: each would hold a copy-on-write layer. A failure is
// logged.
func (s *Service) dropTakenSnapshot(ctx context.Context, vol, snap, forWhat string) {
	if err := s.deleteSnapshot(context.WithoutCancel(ctx), vol, snap); err != nil {
		s.log.Warn("delete the snapshot taken for "+forWhat, "volume", vol, "snapshot", snap, "err", err)
	}
}

// deleteSnapshot deletes snapshot snap of volume vol through the agent's
// route.
func (s *Service) deleteSnapshot(ctx context.Context, vol, snap string) error {
	return s.agentCall(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots/"+url.PathEscape(snap), nil)
}

// agentCall serves one request with the agent's own routes, in process.
func (s *Service) agentCall(ctx context.Context, method, path string, in any) error {
	if s.mux == nil {
		return fmt.Errorf("%s %s: backup service not routed: %w", method, path, blockdev.ErrInvalidArgument)
	}
	var body io.Reader = http.NoBody
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	rec := &recorder{h: http.Header{}, status: http.StatusOK}
	s.mux.ServeHTTP(rec, req)
	if rec.status < 300 {
		return nil
	}
	var eb struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(rec.body, &eb) != nil || eb.Error == "" {
		return fmt.Errorf("%s %s: status %d", method, path, rec.status)
	}
	class := map[string]error{"invalid": blockdev.ErrInvalidArgument, "not_found": blockdev.ErrNotFound,
		"exists": blockdev.ErrExists, "in_use": blockdev.ErrInUse, "corrupt": blockdev.ErrCorrupt}[eb.Code]
	if class == nil {
		return errors.New(eb.Error)
	}
	return &classed{err: errors.New(eb.Error), class: class}
}

// recorder captures what writeErr writes, to learn the error code.
type recorder struct {
	h      http.Header
	status int
	body   []byte
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) WriteHeader(code int)        { r.status = code }
func (r *recorder) Write(p []byte) (int, error) { r.body = append(r.body, p...); return len(p), nil }

// jsonCall is a handler that decodes a Req body, calls fn and writes its
// result as JSON (200) or its error.
func jsonCall[Req, Res any](decode func(*http.Request, any) error, fail func(http.ResponseWriter, error),
	writeJSON func(http.ResponseWriter, int, any), fn func(context.Context, Req) (Res, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := decode(r, &req); err != nil {
			fail(w, err)
			return
		}
		out, err := fn(r.Context(), req)
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// gc runs the engine's two-phase garbage collection on one target or all.
func (s *Service) gc(ctx context.Context, req GCRequest) ([]GCResult, error) {
	opts := backupd.GCOptions{MaxDuration: s.cfg.MaxDuration, Margin: s.cfg.GCMargin}
	if req.Grace != "" {
		g, err := ParseKeepWithin(req.Grace)
		if err != nil {
			return nil, fmt.Errorf("gc grace: %w", err)
		}
		opts.Grace = g
	}
	opts.DryRun = req.DryRun
	out := []GCResult{}
	err := s.eachRepoAll(ctx, req.Target, func(p *repo) error {
		rep, err := p.r.GC(ctx, opts)
		if err != nil {
			return fmt.Errorf("gc on target %q: %w", p.name, err)
		}
		s.log.Info("backup gc", "target", p.name, "packs_deleted", rep.PacksDeleted, "bytes_deleted", rep.BytesDeleted, "dry_run", req.DryRun)
		out = append(out, GCResult{Target: p.name, Report: rep})
		return nil
	})
	if err != nil {
		done := make([]string, len(out))
		for i, g := range out {
			done[i] = fmt.Sprintf("%q: %d packs (%d bytes) %s", g.Target, g.Report.PacksDeleted, g.Report.BytesDeleted, deletedWord(req.DryRun))
		}
		return nil, partialErr("", err, done) // "gc on target ...: ..."
	}
	return out, nil
}
