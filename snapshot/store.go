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
// It removes layer files no volume references (left by a crash between a
// metadata update and a file deletion), unless some volume's metadata is
// unreadable, in which case nothing is removed.
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
	ents, err = os.ReadDir(s.layerDir)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".data"), ".log")
		id, err := parseLayerID(base)
		if err == nil && s.metaRefs[id] > 0 {
			continue
		}
		s.log.Info("removing unreferenced layer file", "file", name)
		if err := os.Remove(filepath.Join(s.layerDir, name)); err != nil {
			s.log.Warn("remove unreferenced layer file", "file", name, "err", err)
		}
	}
	return nil
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
	s.open[name] = v // reserve the name while opening
	s.mu.Unlock()
	if err := v.load(m); err != nil {
		s.mu.Lock()
		delete(s.open, name)
		s.mu.Unlock()
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	return v, nil
}

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
	if err := os.Remove(filepath.Join(s.volDir, name+metaSuffix)); err != nil {
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

func (s *Store) removeLayerFiles(id layerID) {
	dp, lp := layerPaths(s.layerDir, id)
	for _, p := range []string{dp, lp} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove layer file", "layer", id.String(), "err", err)
		}
	}
	s.log.Debug("layer freed", "layer", id.String())
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
	if err := writeFileAtomic(s.volDir, m.Name+metaSuffix, b); err != nil {
		return fmt.Errorf("write volume meta: %w", err)
	}
	old := s.metas[m.Name]
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

// writeFileAtomic replaces dir/name so that a crash leaves the old or the
// new content.
func writeFileAtomic(dir, name string, b []byte) error {
	return atomicfile.Write(filepath.Join(dir, name), b)
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
