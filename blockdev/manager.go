package blockdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/snapshot"
)

// Errors of the Manager, for callers that must not import snapshot.
var (
	// ErrNotFound: no such volume or snapshot.
	ErrNotFound = snapshot.ErrNotFound
	// ErrExists: the volume or snapshot name is taken.
	ErrExists = snapshot.ErrExists
	// ErrInvalidName: a name outside [a-z0-9][a-z0-9._-]{0,62}.
	ErrInvalidName = snapshot.ErrInvalidName
	// ErrInUse: the volume has open devices (an NBD connection, an open
	// FUSE file) and the operation needs it idle.
	ErrInUse = snapshot.ErrInUse
	// ErrCorrupt: on-disk data or metadata failed a check.
	ErrCorrupt = snapshot.ErrCorrupt
)

// SnapshotInfo describes a snapshot of a volume.
type SnapshotInfo = snapshot.SnapshotInfo

// ValidName reports whether s is a valid volume or snapshot name.
func ValidName(s string) bool { return snapshot.ValidName(s) }

// CheckSnapshotName returns an ErrInvalidName error naming snap unless it
// is a valid snapshot name.
func CheckSnapshotName(snap string) error {
	if !ValidName(snap) {
		return fmt.Errorf("snapshot name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", snap, ErrInvalidName)
	}
	return nil
}

// VolumeInfo describes a volume the Manager holds.
type VolumeInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	// Depth is the number of layers in the chain, head included.
	Depth int `json:"depth"`
	// Snapshots are in chain order, the bottom (oldest) first.
	Snapshots []SnapshotInfo `json:"snapshots"`
	// Users counts the devices open on the volume or its snapshots.
	Users int `json:"users"`
	// Err is set when the volume cannot be opened (its metadata or a layer
	// is damaged); the other fields are then zero.
	Err string `json:"error,omitempty"`
}

// Snapshot returns the volume's snapshot named name.
func (vi VolumeInfo) Snapshot(name string) (SnapshotInfo, bool) {
	i := slices.IndexFunc(vi.Snapshots, func(si SnapshotInfo) bool { return si.Name == name })
	if i < 0 {
		return SnapshotInfo{}, false
	}
	return vi.Snapshots[i], true
}

// ManagerOptions configure a Manager. The zero value is valid.
type ManagerOptions struct {
	Logger *slog.Logger
}

// Manager owns a snapshot store and keeps every volume in it open, handing
// out devices by export name: "vol" for a volume's writable head and
// "vol@snap" for a read-only snapshot. Every device for one name is over
// the same open volume, so a Flush through any of them covers writes made
// through all (what NBD multi-conn needs). It is safe for concurrent use.
type Manager struct {
	store *snapshot.Store
	log   *slog.Logger

	mu     sync.Mutex
	closed bool
	vols   map[string]*managed
	broken map[string]error // volumes that failed to open

	// revertHook, if set (tests), runs in Revert once the volume is
	// claimed and m.mu released, before the revert itself.
	revertHook func()
}

type managed struct {
	v     *snapshot.Volume
	dev   headVolume // every head device handed out; its gate holds writes
	users int        // open head devices
	views map[string]*sharedView
	// reverting is set while Revert runs (outside m.mu): the head must
	// not be opened meanwhile, its content is about to be replaced.
	reverting bool
}

// revertingErr is ErrInUse while a Revert of volume name runs, else nil.
// Callers hold m.mu.
func (mv *managed) revertingErr(name string) error {
	if mv.reverting {
		return fmt.Errorf("volume %q: being reverted: %w", name, ErrInUse)
	}
	return nil
}

func newManaged(v *snapshot.Volume) *managed {
	return &managed{v: v, dev: headVolume{v: v, gate: new(writeGate)}, views: make(map[string]*sharedView)}
}

type sharedView struct {
	sw    *swapView // the devices handed out; holds the view
	users int
	// orphaned: the view is no longer reachable by name (its snapshot was
	// deleted or reverted away); the last release closes it.
	orphaned bool
}

func newSharedView(vw *snapshot.View) *sharedView { return &sharedView{sw: &swapView{vw: vw}} }

// created is the creation time of the view's snapshot.
func (sv *sharedView) created() time.Time { return sv.sw.view().Created() }

// close closes the view.
func (sv *sharedView) close() error { return sv.sw.view().Close() }

// orphan detaches sv from its name, closing it now if idle. Callers hold m.mu.
func (sv *sharedView) orphan() {
	sv.orphaned = true
	if sv.users == 0 {
		_ = sv.close()
	}
}

// release drops one user. Callers hold m.mu.
func (sv *sharedView) release() {
	sv.users--
	if sv.users == 0 && sv.orphaned {
		_ = sv.close()
	}
	// An idle view that is not orphaned stays cached: it holds no more than
	// the layers its snapshot holds anyway.
}

// orphanViewsLocked orphans the cached views whose snapshot is gone: by
// name and creation time, so that a snapshot deleted and made again under
// its name never gets the old one's view.
func (mv *managed) orphanViewsLocked() {
	live := make(map[string]time.Time)
	for _, si := range mv.v.Snapshots() {
		live[si.Name] = si.Created
	}
	for name, sv := range mv.views {
		if created, ok := live[name]; !ok || !created.Equal(sv.created()) {
			delete(mv.views, name)
			sv.orphan()
		}
	}
}

func (mv *managed) usersLocked() int {
	n := mv.users
	for _, sv := range mv.views {
		n += sv.users
	}
	return n
}

// OpenManager opens (creating if needed) the store in dir and every volume
// in it. A volume that fails to open is reported by Volumes with its error
// and is not served; the others are.
func OpenManager(ctx context.Context, dir string, opts *ManagerOptions) (*Manager, error) {
	if opts == nil {
		opts = &ManagerOptions{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := snapshot.OpenStore(dir, &snapshot.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	m := &Manager{store: st, log: log, vols: make(map[string]*managed), broken: make(map[string]error)}
	for _, vi := range st.Volumes() {
		if vi.Err != nil {
			m.broken[vi.Name] = vi.Err
			log.Error("volume unreadable; not served", "volume", vi.Name, "err", vi.Err)
			continue
		}
		v, err := st.Open(ctx, vi.Name)
		if err != nil {
			if ctx.Err() != nil {
				_ = m.Close()
				return nil, err
			}
			m.broken[vi.Name] = err
			log.Error("volume failed to open; not served", "volume", vi.Name, "err", err)
			continue
		}
		m.vols[vi.Name] = newManaged(v)
	}
	return m, nil
}

// Close flushes and closes every volume and the store. Devices still open
// fail with ErrClosed afterwards.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, mv := range m.vols {
		for _, sv := range mv.views {
			errs = append(errs, sv.close())
		}
		errs = append(errs, mv.v.Close())
	}
	errs = append(errs, m.store.Close())
	return errors.Join(errs...)
}

// lookup returns the open volume name; callers hold m.mu.
func (m *Manager) lookup(name string) (*managed, error) {
	if m.closed {
		return nil, fmt.Errorf("volume manager: %w", ErrClosed)
	}
	if !ValidName(name) {
		return nil, fmt.Errorf("volume name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", name, ErrInvalidName)
	}
	if err, ok := m.broken[name]; ok {
		return nil, fmt.Errorf("volume %q is not served: %w", name, err)
	}
	mv, ok := m.vols[name]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return mv, nil
}

// createdTimes returns each volume's creation time.
func (m *Manager) createdTimes() map[string]time.Time {
	out := make(map[string]time.Time)
	for _, vi := range m.store.Volumes() {
		out[vi.Name] = vi.Created
	}
	return out
}

func (m *Manager) infoLocked(name string, mv *managed, created time.Time) VolumeInfo {
	snaps := mv.v.Snapshots()
	if snaps == nil {
		snaps = []SnapshotInfo{}
	}
	return VolumeInfo{
		Name: name, Size: mv.v.Size(), Created: created, Depth: mv.v.Depth(),
		Snapshots: snaps, Users: mv.usersLocked(),
	}
}

// Volumes lists every volume by name, those that failed to open included.
func (m *Manager) Volumes(ctx context.Context) ([]VolumeInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("volume manager: %w", ErrClosed)
	}
	out := make([]VolumeInfo, 0, len(m.vols)+len(m.broken))
	created := m.createdTimes()
	for name, mv := range m.vols {
		out = append(out, m.infoLocked(name, mv, created[name]))
	}
	for name, err := range m.broken {
		out = append(out, VolumeInfo{Name: name, Snapshots: []SnapshotInfo{}, Err: err.Error()})
	}
	slices.SortFunc(out, func(a, b VolumeInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Served is the number of volumes the Manager serves (those that failed to
// open not counted): cheap, unlike Volumes, for a metrics scrape.
func (m *Manager) Served() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.vols)
}

// Volume describes one volume.
func (m *Manager) Volume(ctx context.Context, name string) (VolumeInfo, error) {
	if err := ctx.Err(); err != nil {
		return VolumeInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mv, err := m.lookup(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	return m.infoLocked(name, mv, m.createdTimes()[name]), nil
}

// Create makes an empty volume of size bytes (a positive multiple of 4096).
func (m *Manager) Create(ctx context.Context, name string, size int64) (VolumeInfo, error) {
	return m.add(ctx, name, func() (*snapshot.Volume, error) { return m.store.Create(ctx, name, size) })
}

// Clone makes volume dst with the content of snapshot snap of src, sharing
// its layers.
func (m *Manager) Clone(ctx context.Context, src, snap, dst string) (VolumeInfo, error) {
	return m.add(ctx, dst, func() (*snapshot.Volume, error) { return m.store.Clone(ctx, src, snap, dst) })
}

func (m *Manager) add(ctx context.Context, name string, create func() (*snapshot.Volume, error)) (VolumeInfo, error) {
	if err := ctx.Err(); err != nil {
		return VolumeInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return VolumeInfo{}, fmt.Errorf("volume manager: %w", ErrClosed)
	}
	v, err := create()
	if err != nil {
		return VolumeInfo{}, err
	}
	mv := newManaged(v)
	m.vols[name] = mv
	m.log.Info("volume created", "volume", name, "size", v.Size())
	return m.infoLocked(name, mv, m.createdTimes()[name]), nil
}

// Delete removes a volume that no device is open on. Layers it shares with
// clones stay until no volume uses them.
func (m *Manager) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mv, err := m.lookup(name)
	if err != nil {
		return err
	}
	if n := mv.usersLocked(); n > 0 {
		return fmt.Errorf("volume %q: %d devices open on it: %w", name, n, ErrInUse)
	}
	if err := mv.revertingErr(name); err != nil {
		return err
	}
	for snap, sv := range mv.views {
		delete(mv.views, snap)
		sv.orphan()
	}
	if err := mv.v.Close(); err != nil {
		// Closed all the same (Close releases the volume whatever it
		// returns): a failed flush or a full disk must not keep a
		// closed volume registered, nor stop the deletion that would
		// free space.
		m.log.Warn("volume did not close cleanly; deleting it anyway", "volume", name, "err", err)
	}
	delete(m.vols, name)
	if err := m.store.Delete(ctx, name); err != nil {
		// Keep serving it: reopen what we closed.
		if v, oerr := m.store.Open(context.WithoutCancel(ctx), name); oerr == nil {
			m.vols[name] = newManaged(v)
		} else {
			m.broken[name] = oerr
		}
		return err
	}
	m.log.Info("volume deleted", "volume", name)
	return nil
}

// Grow enlarges a volume to size bytes.
func (m *Manager) Grow(ctx context.Context, name string, size int64) error {
	v, err := m.volume(name)
	if err != nil {
		return err
	}
	return v.Grow(ctx, size)
}

// Snapshot takes snapshot snap of volume name.
func (m *Manager) Snapshot(ctx context.Context, name, snap string) (SnapshotInfo, error) {
	v, err := m.volume(name)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if err := v.Snapshot(ctx, snap); err != nil {
		return SnapshotInfo{}, err
	}
	for _, si := range v.Snapshots() {
		if si.Name == snap {
			return si, nil
		}
	}
	return SnapshotInfo{}, fmt.Errorf("volume %q: snapshot %q vanished right after it was taken: %w", name, snap, ErrNotFound)
}

// DeleteSnapshot removes snapshot snap of volume name (an online merge).
// Devices already open on it keep reading it until they close.
func (m *Manager) DeleteSnapshot(ctx context.Context, name, snap string) error {
	m.mu.Lock()
	mv, err := m.lookup(name)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	err = mv.v.DeleteSnapshot(ctx, snap)
	m.settleViews(name, mv)
	if err == nil {
		m.rebaseViews(ctx, name, mv)
	}
	return err
}

// rebaseViews gives the cached views of volume name's other snapshots a
// fresh view on the chain as it is now, closing the old ones: after a
// snapshot's deletion merged its layer up, a view opened before still
// held that layer, and its space stayed taken for as long as the view
// (the FUSE file of every snapshot keeps one open), with its blocks now
// also copied into the layer above. Devices open on a view keep working:
// the content is the same. A view that cannot be opened again keeps the
// old one.
func (m *Manager) rebaseViews(ctx context.Context, name string, mv *managed) {
	m.mu.Lock()
	if m.vols[name] != mv {
		m.mu.Unlock()
		return
	}
	snaps := slices.Collect(maps.Keys(mv.views))
	m.mu.Unlock()
	for _, snap := range snaps {
		vw, err := mv.v.OpenSnapshot(context.WithoutCancel(ctx), snap)
		if err != nil {
			m.log.Warn("snapshot view kept on the old chain after a deletion below it", "volume", name, "snapshot", snap, "err", err)
			continue
		}
		m.mu.Lock()
		sv := mv.views[snap]
		if m.closed || m.vols[name] != mv || sv == nil || sv.orphaned || !sv.created().Equal(vw.Created()) {
			m.mu.Unlock()
			_ = vw.Close()
			continue
		}
		old := sv.sw.swap(vw)
		m.mu.Unlock()
		_ = old.Close()
	}
}

// settleViews drops the cached views of volume name whose snapshot is gone
// after a DeleteSnapshot or Revert of mv, unless the volume was deleted
// (or made again) meanwhile.
func (m *Manager) settleViews(name string, mv *managed) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vols[name] == mv {
		mv.orphanViewsLocked()
	}
}

// InUse returns ErrInUse if a device is open on volume name's head.
func (m *Manager) InUse(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.idleLocked(name)
	return err
}

// idleLocked looks up volume name and checks that no device is open on
// its head. Callers hold m.mu.
func (m *Manager) idleLocked(name string) (*managed, error) {
	mv, err := m.lookup(name)
	switch {
	case err != nil:
	case mv.users > 0:
		err = fmt.Errorf("volume %q: %d devices open on it: %w", name, mv.users, ErrInUse)
	default:
		err = mv.revertingErr(name)
	}
	return mv, err
}

// Revert makes volume name's content that of snapshot snap again; newer
// snapshots are dropped. No device may be open on the volume's head.
func (m *Manager) Revert(ctx context.Context, name, snap string) error {
	m.mu.Lock()
	mv, err := m.idleLocked(name)
	if err == nil {
		// Until it is done no head device opens (it could read and
		// write the content the revert replaces), nor a second Revert
		// or a Delete starts.
		mv.reverting = true
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		m.mu.Lock()
		mv.reverting = false
		m.mu.Unlock()
	}()
	if m.revertHook != nil {
		m.revertHook()
	}
	err = mv.v.Revert(ctx, snap)
	m.settleViews(name, mv)
	return err
}

// Changed returns the extents written between snapshots from and to of a
// volume ("" for from means the empty volume, "" for to the head).
func (m *Manager) Changed(ctx context.Context, name, from, to string) ([]Extent, error) {
	v, err := m.volume(name)
	if err != nil {
		return nil, err
	}
	return v.Changed(ctx, from, to)
}

// Scrub verifies the checksums of every sealed layer of volume name.
func (m *Manager) Scrub(ctx context.Context, name string) (snapshot.ScrubReport, error) {
	v, err := m.volume(name)
	if err != nil {
		return snapshot.ScrubReport{}, err
	}
	return v.Scrub(ctx)
}

func (m *Manager) volume(name string) (*snapshot.Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mv, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	return mv.v, nil
}

// SplitExport splits an export name into volume and snapshot ("" for the
// head), validating both.
func SplitExport(export string) (vol, snap string, err error) {
	vol, snap, isSnap := strings.Cut(export, "@")
	if !ValidName(vol) || (isSnap && !ValidName(snap)) {
		return "", "", fmt.Errorf("export name %q: want VOLUME or VOLUME@SNAPSHOT, names matching [a-z0-9][a-z0-9._-]{0,62}: %w", export, ErrInvalidName)
	}
	return vol, snap, nil
}

// Exports lists the export names: every served volume, then each of its
// snapshots as "vol@snap", sorted.
func (m *Manager) Exports(ctx context.Context) ([]string, error) {
	vols, err := m.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, vi := range vols {
		if vi.Err != "" {
			continue
		}
		out = append(out, vi.Name)
		for _, si := range vi.Snapshots {
			out = append(out, vi.Name+"@"+si.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Open returns the device for an export name and a release func to call
// exactly once when done with it. Devices of one name share one open
// volume (or one snapshot view).
func (m *Manager) Open(ctx context.Context, export string) (Volume, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	vol, snap, err := SplitExport(export)
	if err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mv, err := m.lookup(vol)
	if err != nil {
		return nil, nil, err
	}
	if snap == "" {
		if err := mv.revertingErr(vol); err != nil {
			return nil, nil, err
		}
		mv.users++
		return mv.dev, m.releaser(func() { mv.users-- }), nil
	}
	sv := mv.views[snap]
	if sv != nil {
		// A snapshot deleted and made again under the name since the
		// view was cached (the deletion's own cleanup may not have run
		// yet) must not be served from the old one's view.
		if created, ok := mv.v.SnapshotCreated(snap); !ok || !created.Equal(sv.created()) {
			delete(mv.views, snap)
			sv.orphan()
			sv = nil
		}
	}
	if sv == nil {
		vw, err := mv.v.OpenSnapshot(ctx, snap)
		if err != nil {
			return nil, nil, err
		}
		sv = newSharedView(vw)
		mv.views[snap] = sv
	}
	sv.users++
	return sv.sw, m.releaser(sv.release), nil
}

// releaser wraps fn to run once under m.mu.
func (m *Manager) releaser(fn func()) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			fn()
		})
	}
}
