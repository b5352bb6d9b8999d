package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/internal/atomicfile"
)

const (
	storeMarker     = "FORMAT"
	storeMarkerText = "strata snapshot store\nformat 1\n"
	volumesDir      = "volumes"
	layersDir       = "layers"
	metaSuffix      = ".meta"
	freeSuffix      = ".free"
	orphanDir       = "orphaned"
	tmpSuffix       = atomicfile.TmpSuffix
)

// Options configures a Store. The zero value is valid.
type Options struct {
	// Logger receives the store's structured logs; nil discards them.
	Logger *slog.Logger
}

// Store is a directory of volumes sharing one pool of layers. One process
// holds a Store at a time (an flock on DIR/lock). All methods are safe for
// concurrent use.
type Store struct {
	dir      string
	volDir   string
	layerDir string
	lockFile *os.File
	log      *slog.Logger

	mu       sync.Mutex
	closed   bool
	metas    map[string]*volumeMeta // every volume's current metadata
	broken   map[string]error       // volumes whose metadata failed to load
	metaRefs map[layerID]int        // references to each layer from metas
	layers   map[layerID]*layer     // open layers
	open     map[string]*Volume     // open volumes
}

// lockPatience is how long OpenStore waits for the store's lock. A child
// process forked by this one holds a copy of the lock's descriptor from
// fork until its exec closes it: a store closed and reopened meanwhile
// would otherwise be refused for a moment.
const lockPatience = 2 * time.Second

// lockWait takes an exclusive flock on f, retrying until patience passes.
func lockWait(f *os.File, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil || !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// OpenStore opens the store in dir, creating it if dir is empty or missing.
// It removes the files of layers no volume references that the store freed
// (left by a crash between a metadata update and a file deletion) or never
// wrote to (a crash before a new layer was committed), and moves any other
// unreferenced layer to layers/orphaned/ with an error in the log: such a
// layer lost its metadata some other way and may be recoverable. Nothing
// is removed or moved while some volume's metadata is unreadable.
func OpenStore(dir string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		dir:      dir,
		volDir:   filepath.Join(dir, volumesDir),
		layerDir: filepath.Join(dir, layersDir),
		log:      log,
		metas:    make(map[string]*volumeMeta),
		broken:   make(map[string]error),
		metaRefs: make(map[layerID]int),
		layers:   make(map[layerID]*layer),
		open:     make(map[string]*Volume),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	// Lock before looking at the directory, so two processes never
	// initialise or clean up the same store at once.
	lf, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	if err := lockWait(lf, lockPatience); err != nil {
		_ = lf.Close()
		return nil, fmt.Errorf("store %s: held by another process: %w", dir, ErrInUse)
	}
	s.lockFile = lf
	if err := s.initDir(); err != nil {
		_ = lf.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		_ = lf.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) initDir() error {
	marker := filepath.Join(s.dir, storeMarker)
	b, err := os.ReadFile(marker)
	switch {
	case err == nil:
		if string(b) != storeMarkerText {
			return fmt.Errorf("store %s: %s says %q: %w", s.dir, storeMarker, strings.TrimSpace(string(b)), ErrUnsupportedFormat)
		}
		if err := s.checkVolDir(); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist):
		ents, err := os.ReadDir(s.dir)
		if err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
		for _, e := range ents {
			switch e.Name() {
			case "lock":
				// Ours, created above.
			case storeMarker + tmpSuffix:
				// A crash while writing the marker: start again.
				if err := os.Remove(filepath.Join(s.dir, e.Name())); err != nil {
					return fmt.Errorf("store %s: %w", s.dir, err)
				}
			default:
				return fmt.Errorf("store %s: directory is not empty and has no %s file: %w", s.dir, storeMarker, ErrInvalidArgument)
			}
		}
		if err := writeFileAtomic(s.dir, storeMarker, []byte(storeMarkerText)); err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
	default:
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	for _, d := range []string{s.volDir, s.layerDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
	}
	return syncDir(s.dir)
}

// checkVolDir refuses a store whose volumes directory is gone while its
// layer pool holds files: opening it would find every layer unreferenced.
// (A crash between writing the FORMAT marker and making the directories
// leaves neither directory.)
func (s *Store) checkVolDir() error {
	if _, err := os.Stat(s.volDir); !errors.Is(err, fs.ErrNotExist) {
		return nil // present, or an error the load reports
	}
	ents, err := os.ReadDir(s.layerDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("store %s: directory %s is missing but %s holds %d files: restore %s (or move %s away to start empty): %w",
			s.dir, volumesDir, layersDir, len(ents), volumesDir, layersDir, ErrCorrupt)
	}
	return nil
}

func (s *Store) load() error {
	ents, err := os.ReadDir(s.volDir)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, tmpSuffix) {
			_ = os.Remove(filepath.Join(s.volDir, name))
			continue
		}
		vol, ok := strings.CutSuffix(name, metaSuffix)
		if !ok {
			continue
		}
		m, err := readMeta(filepath.Join(s.volDir, name))
		if err == nil && m.Name != vol {
			err = fmt.Errorf("volume meta %s names volume %q: %w", name, m.Name, ErrCorrupt)
		}
		if err != nil {
			s.broken[vol] = err
			s.log.Error("volume metadata unreadable; layer cleanup disabled", "volume", vol, "err", err)
			continue
		}
		s.metas[vol] = m
		for _, l := range m.Layers {
			s.metaRefs[l.id]++
		}
	}
	if len(s.broken) > 0 {
		return nil
	}
	return s.cleanLayers()
}

// cleanLayers settles the layer pool against the loaded metadata: the
// files of an unreferenced layer are removed if the store freed it (its
// .free marker, written before the metadata update that dropped it) or
// never wrote to it, and moved to layers/orphaned/ otherwise. A .free
// marker of a layer still referenced is stale (its metadata update
// failed or was lost) and removed.
func (s *Store) cleanLayers() error {
	ents, err := os.ReadDir(s.layerDir)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	freed := make(map[layerID]bool)
	for _, e := range ents {
		name := e.Name()
		base, kind := name, ""
		for _, suf := range []string{".data", ".log", freeSuffix} {
			if b, ok := strings.CutSuffix(name, suf); ok {
				base, kind = b, suf
				break
			}
		}
		id, err := parseLayerID(base)
		if err != nil || kind == "" || e.IsDir() {
			if name != orphanDir {
				s.log.Warn("unknown entry in the layer pool, left alone", "file", filepath.Join(s.layerDir, name))
			}
			continue
		}
		if _, seen := freed[id]; !seen || kind == freeSuffix {
			freed[id] = kind == freeSuffix
		}
	}
	for id, free := range freed {
		switch {
		case s.metaRefs[id] > 0:
			if free {
				s.removeFiles(id.String() + freeSuffix)
			}
		case free:
			s.log.Info("removing a layer freed before a crash", "layer", id.String())
			s.removeLayerFiles(id)
		case s.neverWritten(id):
			s.log.Info("removing a layer never committed", "layer", id.String())
			s.removeLayerFiles(id)
		default:
			s.quarantine(id)
		}
	}
	return nil
}

// neverWritten reports whether layer id's files hold nothing: an empty data
// file and a log of at most its header (what newLayer makes before the
// metadata names the layer).
func (s *Store) neverWritten(id layerID) bool {
	dp, lp := layerPaths(s.layerDir, id)
	for _, f := range []struct {
		path string
		max  int64
	}{{dp, 0}, {lp, logHeaderSize}} {
		fi, err := os.Stat(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil || fi.Size() > f.max {
			return false
		}
	}
	return true
}

// quarantine moves the files of layer id, which no metadata references and
// the store did not free, to layers/orphaned/: its volume's metadata was
// lost, and the layer's self-describing log may let an operator recover
// it.
func (s *Store) quarantine(id layerID) {
	dir := filepath.Join(s.layerDir, orphanDir)
	s.log.Error("layer not referenced by any volume metadata and not freed by the store: moving it aside; inspect and delete it by hand",
		"layer", id.String(), "to", dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.log.Error("quarantine layer", "layer", id.String(), "err", err)
		return
	}
	dp, lp := layerPaths(s.layerDir, id)
	for _, p := range []string{dp, lp} {
		if err := os.Rename(p, filepath.Join(dir, filepath.Base(p))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("quarantine layer", "layer", id.String(), "err", err)
		}
	}
	for _, d := range []string{dir, s.layerDir} {
		if err := syncDir(d); err != nil {
			s.log.Error("quarantine layer", "layer", id.String(), "err", err)
		}
	}
}

func readMeta(path string) (*volumeMeta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("volume meta %s: %w", path, err)
	}
	m, err := decodeMeta(b)
	if err != nil {
		return nil, fmt.Errorf("volume meta %s: %w", path, err)
	}
	return m, nil
}

// Close closes every open volume and releases the store. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	vols := make([]*Volume, 0, len(s.open))
	for _, v := range s.open {
		vols = append(vols, v)
	}
	s.mu.Unlock()
	var errs []error
	for _, v := range vols {
		errs = append(errs, v.Close())
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	errs = append(errs, s.lockFile.Close())
	return errors.Join(errs...)
}

// VolumeInfo describes a volume of the store.
type VolumeInfo struct {
	Name    string
	Size    int64
	Created time.Time
	// Snapshots counts the volume's named snapshots.
	Snapshots int
	// Open reports whether a Volume handle is open.
	Open bool
	// Err is set when the volume's metadata cannot be read.
	Err error
}

// Volumes lists the store's volumes by name.
func (s *Store) Volumes() []VolumeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]VolumeInfo, 0, len(s.metas)+len(s.broken))
	for name, m := range s.metas {
		n := 0
		for _, l := range m.Layers {
			if l.Snapshot != "" {
				n++
			}
		}
		_, open := s.open[name]
		out = append(out, VolumeInfo{Name: name, Size: m.Size, Created: m.Created, Snapshots: n, Open: open})
	}
	for name, err := range s.broken {
		out = append(out, VolumeInfo{Name: name, Err: err})
	}
	slices.SortFunc(out, func(a, b VolumeInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Create makes a new empty volume of size bytes (a multiple of BlockSize)
// and returns it open.
func (s *Store) Create(ctx context.Context, name string, size int64) (*Volume, error) {
	if err := checkName("volume", name); err != nil {
		return nil, err
	}
	if err := checkSize(size); err != nil {
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return s.createFrom(ctx, name, size, nil)
}

// Clone makes a new volume dst whose content is snapshot snap of volume
// src. It shares src's sealed layers up to snap (reference-counted) and
// starts with an empty head; it has no snapshots of its own. The new
// volume is returned open.
func (s *Store) Clone(ctx context.Context, src, snap, dst string) (*Volume, error) {
	if err := checkName("volume", dst); err != nil {
		return nil, err
	}
	s.mu.Lock()
	m, ok := s.metas[src]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", src, ErrNotFound)
	}
	pos := m.findSnapshot(snap)
	if pos < 0 {
		return nil, fmt.Errorf("volume %q: snapshot %q: %w", src, snap, ErrNotFound)
	}
	base := make([]layerMeta, pos+1)
	copy(base, m.Layers[:pos+1])
	for i := range base {
		base[i].Snapshot = ""
	}
	return s.createFrom(ctx, dst, base[pos].Size, base)
}

func (s *Store) createFrom(ctx context.Context, name string, size int64, base []layerMeta) (*Volume, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	head, err := s.newLayer()
	if err != nil {
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	now := time.Now().UTC()
	m := &volumeMeta{Format: metaFormat, Name: name, Size: size, Created: now}
	m.Layers = append(base, layerMeta{ID: head.id.String(), Created: now})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.release(head)
		return nil, fmt.Errorf("store: %w", ErrClosed)
	}
	_, exists := s.metas[name]
	if _, broken := s.broken[name]; broken || exists {
		s.mu.Unlock()
		s.release(head)
		return nil, fmt.Errorf("volume %q: %w", name, ErrExists)
	}
	// The base layers must still exist: Clone read the source meta without
	// the lock, and the source may have dropped a layer since.
	for _, l := range base {
		if s.metaRefs[l.id] == 0 {
			s.mu.Unlock()
			s.release(head)
			return nil, fmt.Errorf("volume %q: source layer %s went away (snapshot deleted concurrently): %w", name, l.ID, ErrNotFound)
		}
	}
	err = s.writeMetaLocked(m)
	s.mu.Unlock()
	s.release(head) // the volume opens its own handle below
	if err != nil {
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return s.Open(ctx, name)
}

// Open opens a volume. A volume has at most one open handle; a second Open
// returns ErrInUse.
func (s *Store) Open(ctx context.Context, name string) (*Volume, error) {
	if err := checkName("volume", name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("store: %w", ErrClosed)
	}
	if err, ok := s.broken[name]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	m, ok := s.metas[name]
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if _, ok := s.open[name]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("volume %q: already open: %w", name, ErrInUse)
	}
	v := &Volume{s: s, name: name}
	// Loading holds opMu, so a Store.Close meanwhile waits for the volume
	// (its Close takes opMu) instead of closing it half loaded.
	v.opMu.Lock()
	defer v.opMu.Unlock()
	s.open[name] = v // reserve the name while opening
	s.mu.Unlock()
	if h := openHook; h != nil {
		h(v)
	}
	if err := v.load(m); err != nil {
		v.closed = true // nothing for a waiting Close to do
		s.mu.Lock()
		delete(s.open, name)
		s.mu.Unlock()
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return v, nil
}

// openHook, set only by tests, runs in Open after the name is reserved
// and before the volume loads.
var openHook func(v *Volume)

// Delete removes a volume that is not open. Layers it shared with clones
// stay until no volume references them.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := checkName("volume", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.open[name]; ok {
		return fmt.Errorf("volume %q: is open: %w", name, ErrInUse)
	}
	if _, ok := s.broken[name]; ok {
		return fmt.Errorf("volume %q: metadata unreadable; remove %s by hand after inspection: %w", name, filepath.Join(s.volDir, name+metaSuffix), ErrCorrupt)
	}
	m, ok := s.metas[name]
	if !ok {
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	// Without markers (a full filesystem cannot make them) the deletion
	// goes on: a crash before the layers are removed then leaves them in
	// layers/orphaned/, not lost, and a full disk must not stop the
	// deletion that would free it.
	marked, err := s.markFreedLocked(m.Layers, nil)
	if err != nil {
		s.log.Warn("deleting a volume without .free markers", "volume", name, "err", err)
	}
	if err := os.Remove(filepath.Join(s.volDir, name+metaSuffix)); err != nil {
		s.unmarkLocked(marked)
		return fmt.Errorf("volume %q: %w", name, err)
	}
	if err := syncDir(s.volDir); err != nil {
		return fmt.Errorf("volume %q: %w", name, err)
	}
	delete(s.metas, name)
	for _, l := range m.Layers {
		s.unrefLocked(l.id)
	}
	return nil
}

// newLayer creates an empty layer with a fresh id, durable in its
// directory, and returns it with one handle reference.
func (s *Store) newLayer() (*layer, error) {
	for range 8 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("new layer id: %w", err)
		}
		id := layerID(binary.LittleEndian.Uint64(b[:]))
		if id == 0 {
			continue
		}
		s.mu.Lock()
		_, taken := s.layers[id]
		taken = taken || s.metaRefs[id] > 0
		s.mu.Unlock()
		if taken {
			continue
		}
		l, err := createLayer(s.layerDir, id)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := syncDir(s.layerDir); err != nil {
			l.close()
			return nil, fmt.Errorf("new layer: %w", err)
		}
		l.refs = 1
		s.mu.Lock()
		s.layers[id] = l
		s.mu.Unlock()
		return l, nil
	}
	return nil, errors.New("new layer: no free id after 8 tries")
}

// acquire returns an open handle on layer id.
func (s *Store) acquire(id layerID, head bool) (l *layer, clean bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.layers[id]; ok {
		l.refs++
		return l, true, nil
	}
	committed := int64(-1)
	if !head {
		committed = s.committedLogLocked(id)
	}
	l, clean, err = openLayer(s.layerDir, id, committed)
	if err != nil {
		return nil, false, err
	}
	l.refs = 1
	s.layers[id] = l
	return l, clean, nil
}

// committedLogLocked returns the longest synced log length any volume's
// metadata records for sealed layer id. Volumes sharing a layer may record
// different lengths: a merge into it commits in one volume's metadata only.
func (s *Store) committedLogLocked(id layerID) int64 {
	var n int64
	for _, m := range s.metas {
		for _, l := range m.Layers[:len(m.Layers)-1] {
			if l.id == id {
				n = max(n, l.LogSize)
			}
		}
	}
	return n
}

// release drops a handle; the last one closes the layer, and deletes its
// files when no volume references it any more.
func (s *Store) release(l *layer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.refs--
	if l.refs > 0 {
		return
	}
	l.close()
	delete(s.layers, l.id)
	if s.metaRefs[l.id] == 0 {
		s.removeLayerFiles(l.id)
	}
}

func (s *Store) unrefLocked(id layerID) {
	s.metaRefs[id]--
	if s.metaRefs[id] > 0 {
		return
	}
	delete(s.metaRefs, id)
	if _, open := s.layers[id]; !open {
		s.removeLayerFiles(id)
	}
}

// removeLayerFiles deletes the files of a layer no metadata references,
// its .free marker last. While some volume's metadata is unreadable it
// deletes nothing: that volume may reference the layer (the marker stays,
// so the next clean open removes the layer).
func (s *Store) removeLayerFiles(id layerID) {
	if len(s.broken) > 0 {
		s.log.Warn("layer unreferenced but kept: some volume metadata is unreadable", "layer", id.String())
		return
	}
	n := id.String()
	s.removeFiles(n+".data", n+".log", n+freeSuffix)
	s.log.Debug("layer freed", "layer", n)
}

// removeFiles removes the named files of the layer pool, in order.
func (s *Store) removeFiles(names ...string) {
	for _, n := range names {
		if err := os.Remove(filepath.Join(s.layerDir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove layer file", "file", n, "err", err)
		}
	}
}

// markFreedLocked writes, durably, a .free marker for every layer of old
// that replacing old by new in one volume's metadata leaves unreferenced,
// so that a crash after the update lets the next open tell a layer the
// store freed from one whose metadata was lost. It returns the layers
// marked, for unmarkLocked if the update fails.
func (s *Store) markFreedLocked(old, new []layerMeta) ([]layerID, error) {
	var marked []layerID
	for _, l := range old {
		if s.metaRefs[l.id] > 1 || slices.ContainsFunc(new, func(n layerMeta) bool { return n.id == l.id }) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(s.layerDir, l.id.String()+freeSuffix), os.O_WRONLY|os.O_CREATE, 0o600)
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			s.unmarkLocked(marked)
			return nil, fmt.Errorf("mark layer %s freed: %w", l.id, err)
		}
		marked = append(marked, l.id)
	}
	if len(marked) == 0 {
		return nil, nil
	}
	if err := syncDir(s.layerDir); err != nil {
		s.unmarkLocked(marked)
		return nil, fmt.Errorf("mark layers freed: %w", err)
	}
	return marked, nil
}

// unmarkLocked removes the .free markers of layers still referenced.
func (s *Store) unmarkLocked(ids []layerID) {
	for _, id := range ids {
		s.removeFiles(id.String() + freeSuffix)
	}
}

// writeMeta atomically replaces a volume's metadata and adjusts layer
// references, freeing layers no longer referenced by anything.
func (s *Store) writeMeta(m *volumeMeta) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("store: %w", ErrClosed)
	}
	return s.writeMetaLocked(m)
}

func (s *Store) writeMetaLocked(m *volumeMeta) error {
	b, err := encodeMeta(m)
	if err != nil {
		return err
	}
	old := s.metas[m.Name]
	var oldLayers []layerMeta
	if old != nil {
		oldLayers = old.Layers
	}
	marked, err := s.markFreedLocked(oldLayers, m.Layers)
	if err != nil {
		return fmt.Errorf("write volume meta: %w", err)
	}
	if err := writeFileAtomic(s.volDir, m.Name+metaSuffix, b); err != nil {
		if errors.Is(err, atomicfile.ErrUncertain) {
			// The file holds m now but may hold old after a crash: keep
			// the layers of both referenced until the next open reads
			// it. The caller fails the volume (errMetaUncertain).
			s.metas[m.Name] = m
			for _, l := range m.Layers {
				s.metaRefs[l.id]++
			}
			return fmt.Errorf("write volume meta: %w: %w", errMetaUncertain, err)
		}
		s.unmarkLocked(marked)
		return fmt.Errorf("write volume meta: %w", err)
	}
	s.metas[m.Name] = m
	for _, l := range m.Layers {
		s.metaRefs[l.id]++
	}
	if old != nil {
		for _, l := range old.Layers {
			s.unrefLocked(l.id)
		}
	}
	return nil
}

// errMetaUncertain marks a metadata update whose outcome after a crash is
// unknown (atomicfile.ErrUncertain): the volume must not go on from either
// chain until the store is opened again.
var errMetaUncertain = errors.New("volume metadata update uncertain; reopen the store to settle it")

// writeFileAtomic replaces dir/name so that a crash leaves the old or the
// new content. A variable so tests can inject failures.
var writeFileAtomic = func(dir, name string, b []byte) error {
	return atomicfile.Write(filepath.Join(dir, name), b)
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
