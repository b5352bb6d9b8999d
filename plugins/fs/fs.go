package fs

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/strata-block/strata/internal/writeback"
	"github.com/strata-block/strata/plugins"
)

// Kind is the plugin kind and Info().Kind of this target.
const Kind = "fs"

// tmpPrefix begins the names of files being written. Keys never begin a
// segment with ".", so List never shows them and no key can collide.
const tmpPrefix = ".tmp-"

// staleTempAge is how long after its last write a temporary file is taken
// for the leftover of a Put whose process died, which New sweeps away
// (sweepTemps). A live Put writes its file from the moment it creates it
// (each write moves the modification time on) and then only fsyncs and
// renames or links it: no Put leaves its file untouched for anywhere near
// a day, short of a process stopped that long. Even that one loses
// nothing silently: its rename or link then fails (the file is gone) and
// the Put returns an error. So the sweep of one process cannot break the
// Puts of another on the same directory.
const staleTempAge = 24 * time.Hour

// Target stores each object as a regular file: key "a/b/c" is the file
// <root>/a/b/c. Because keys are paths, a key cannot be both an object and
// a directory of others: with "a" stored, "a/b" fails with a permanent
// error (and the reverse). Files the target did not write are ignored by
// List if their names are not keys.
//
// Every path is opened through an os.Root on the root directory, which
// refuses to resolve outside it (openat2 RESOLVE_BENEATH on Linux, a
// component-by-component walk elsewhere), so neither a key nor a symlink
// planted in the directory reaches a file outside — on top of ValidateKey,
// which already rules out "..", absolute keys and every odd byte.
type Target struct {
	root   *os.Root
	dir    string
	local  bool // dir is on a local filesystem (ServesFiles)
	closed atomic.Bool

	// durableDirs holds the directories (paths under the root) whose
	// entries this process has fsynced into their parents, with their
	// parents' own, up to the root: mkdirs fsyncs each directory of a key
	// once per process, whether it created it or found it.
	durableDirs sync.Map // string -> struct{}

	// fsync makes the open file or directory f (name, under the root)
	// durable; f.Sync but in tests, which record the calls.
	fsync func(name string, f *os.File) error

	stopSweep context.CancelFunc
	swept     chan struct{} // closed when the sweep of New has ended
}

var _ plugins.FileTarget = (*Target)(nil)

// Open is the plugins.OpenFunc of the fs target: it parses a file URL
// (ParseURL) and opens New on its directory. The fs target takes no
// credentials; any given are ignored.
func Open(_ context.Context, rawURL string, _ plugins.Credentials) (plugins.Target, error) {
	dir, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(dir)
}

// ParseURL returns the directory of a "file:///abs/dir" URL. The host must
// be empty or "localhost"; a relative path, user info, query or fragment
// is an error.
func ParseURL(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("fs target URL does not parse: %w", plugins.ErrPermanent)
	}
	switch {
	case u.Scheme != "file":
		return "", fmt.Errorf("fs target URL: scheme %q, want file: %w", u.Scheme, plugins.ErrPermanent)
	case u.User != nil:
		return "", fmt.Errorf("fs target URL: user info is not allowed: %w", plugins.ErrPermanent)
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("fs target URL: host %q, want none (file:///path): %w", u.Host, plugins.ErrPermanent)
	case u.Opaque != "" || !path.IsAbs(u.Path):
		return "", fmt.Errorf("fs target URL %q: want an absolute path, file:///path: %w", rawURL, plugins.ErrPermanent)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("fs target URL %q: takes no query or fragment: %w", rawURL, plugins.ErrPermanent)
	case strings.ContainsRune(u.Path, 0):
		return "", fmt.Errorf("fs target URL: NUL in path: %w", plugins.ErrPermanent)
	}
	return path.Clean(u.Path), nil
}

// sweepEvery is how often the temporary files are swept: New sweeps only
// if the last complete sweep (the modification time of sweptMarker) is
// older. A plugin process is started for each use of a target, and the
// sweep walks the whole tree, which for a repository of millions of
// objects is a lot of I/O to repeat at every backup.
const sweepEvery = time.Hour

// sweptMarker is the file whose modification time records the last
// complete sweep (hidden: no key begins a segment with ".").
const sweptMarker = ".swept"

// New opens the target on dir, creating it (0700) if it does not exist.
// In the background it removes the temporary files Puts of dead processes
// left, those untouched for staleTempAge, unless another New did within
// sweepEvery; Close stops that.
func New(dir string) (*Target, error) {
	t, err := open(dir)
	if err != nil {
		return nil, err
	}
	if fi, err := t.root.Stat(sweptMarker); err == nil && time.Since(fi.ModTime()).Abs() < sweepEvery {
		close(t.swept)
		return t, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stopSweep = cancel
	go func() {
		defer close(t.swept)
		n, err := t.sweepTemps(ctx, time.Now().Add(-staleTempAge))
		switch {
		case err != nil && ctx.Err() == nil:
			slog.Warn("fs target: removing stale temporary files", "dir", dir, "removed", n, "err", err)
		case err != nil:
		default:
			if n > 0 {
				slog.Info("fs target: removed stale temporary files", "dir", dir, "removed", n)
			}
			if err := t.markSwept(); err != nil {
				slog.Warn("fs target: recording the sweep", "dir", dir, "err", err)
			}
		}
	}()
	return t, nil
}

// markSwept sets sweptMarker's modification time to now (creating it).
func (t *Target) markSwept() error {
	f, err := t.root.OpenFile(sweptMarker, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	now := time.Now()
	return t.root.Chtimes(sweptMarker, now, now)
}

// open is New without the sweep.
func open(dir string) (*Target, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("fs target %s: %w", dir, classify(err))
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("fs target %s: %w", dir, classify(err))
	}
	t := &Target{root: root, dir: dir, local: onLocalDisk(dir), swept: make(chan struct{})}
	t.fsync = func(_ string, f *os.File) error { return f.Sync() }
	return t, nil
}

// isTempName reports whether name is that of a temporary file of begin:
// tmpPrefix and 16 hex digits.
func isTempName(name string) bool {
	id, ok := strings.CutPrefix(name, tmpPrefix)
	if !ok || len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// sweepTemps removes the temporary files last modified before cutoff in
// every directory of keys (hidden directories, which hold no keys, are
// not entered), returning how many it removed. It goes on past errors
// on single entries and returns the first.
func (t *Target) sweepTemps(ctx context.Context, cutoff time.Time) (int, error) {
	removed := 0
	var first error
	note := func(err error) {
		if first == nil {
			first = err
		}
	}
	err := fs.WalkDir(t.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			note(fmt.Errorf("sweeping temporary files: %q: %w", p, classify(err)))
			return nil // skips the directory, goes on with the rest
		}
		name := d.Name()
		switch {
		case d.IsDir():
			if p != "." && strings.HasPrefix(name, ".") {
				return fs.SkipDir
			}
			return nil
		case !d.Type().IsRegular() || !isTempName(name):
			return nil
		}
		fi, err := d.Info()
		if missing(err) {
			return nil // its Put has just ended
		}
		if err != nil {
			note(fmt.Errorf("sweeping temporary files: %q: %w", p, classify(err)))
			return nil
		}
		if !fi.ModTime().Before(cutoff) {
			return nil
		}
		if err := t.root.Remove(p); err != nil && !missing(err) {
			note(fmt.Errorf("sweeping temporary files: removing %q: %w", p, classify(err)))
			return nil
		}
		removed++
		return nil
	})
	if err != nil {
		return removed, err
	}
	return removed, first
}

// classify gives a filesystem error its class (plugins.FileError).
func classify(err error) error { return plugins.FileError(err) }

func (t *Target) check() error {
	if t.closed.Load() {
		return plugins.ErrClosed
	}
	return nil
}

// Info reports atomic conditional create (link(2)).
func (t *Target) Info(context.Context) (plugins.Info, error) {
	if err := t.check(); err != nil {
		return plugins.Info{}, err
	}
	return plugins.Info{Kind: Kind, ConditionalCreate: plugins.ConditionalCreateAtomic, MaxObjectSize: 1 << 50, MaxBatch: plugins.MaxBatch}, nil
}

// Put writes the object to a temporary file in the key's directory,
// fsyncs it, renames it over the key and fsyncs the directory: a reader
// sees the old file or the new one, and after a crash either is there
// whole (a leftover temporary file is invisible to List).
func (t *Target) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return t.put(ctx, key, r, size, false)
}

// PutIfAbsent writes a temporary file as Put does, then link(2)s it to the
// key, which fails with EEXIST if the key exists: the kernel (or the NFS
// server) decides atomically which creator wins. NFS may report EEXIST
// for a link whose reply was lost and retransmitted although it
// succeeded; as link(2) advises, the temporary file's link count then
// tells: 2 means the link is ours.
func (t *Target) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return t.put(ctx, key, r, size, true)
}

var copyPool = sync.Pool{New: func() any {
	b := make([]byte, 1<<20)
	return &b
}}

func (t *Target) put(ctx context.Context, key string, r io.Reader, size int64, ifAbsent bool) error {
	p, err := t.begin(key, size, ifAbsent)
	if err != nil {
		return err
	}
	// Writeback of each MiB starts as it is written, so storage writes
	// overlap the rest of the transfer instead of all waiting for the
	// final fsync.
	wb := &writeback.Writer{F: p.f, Wrap: classify}
	if src, ok := r.(plugins.SpliceSource); ok {
		// In a plugin, data from the host's pipe: splice(2) moves it into
		// the file without a copy through our memory, and checks its size.
		_, err = src.SpliceTo(ctx, p.f, wb.Wrote)
	} else {
		bp := copyPool.Get().(*[]byte)
		// Through a writer of our own: *os.File's ReadFrom would copy in
		// 32 KiB pieces (genericReadFrom), ignoring the buffer.
		_, err = io.CopyBuffer(wb, plugins.SizedReader(plugins.ContextReader(ctx, r), size), *bp)
		copyPool.Put(bp)
	}
	if err != nil {
		p.Abort()
		return fmt.Errorf("%s %q: writing: %w", p.op, key, err)
	}
	return p.Commit(ctx)
}

// PutFile starts a Put (PutIfAbsent if ifAbsent) whose data the caller
// writes into a temporary file (plugins.FileTarget). In a plugin, the
// host writes into it through the descriptor the plugin passes.
func (t *Target) PutFile(_ context.Context, key string, size int64, ifAbsent bool) (plugins.FilePut, error) {
	return t.begin(key, size, ifAbsent)
}

// filePut is a Put in progress: its temporary file, not yet visible
// under the key.
type filePut struct {
	t        *Target
	op, key  string
	dir, tmp string
	f        *os.File // nil once the Put is over
	size     int64
	ifAbsent bool
}

// begin validates a Put and creates its temporary file in the key's
// directory, creating the directories first.
func (t *Target) begin(key string, size int64, ifAbsent bool) (*filePut, error) {
	op := "put"
	if ifAbsent {
		op = "put-if-absent"
	}
	if err := plugins.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("%s %q: negative size %d: %w", op, key, size, plugins.ErrPermanent)
	}
	dir := path.Dir(key)
	if err := t.mkdirs(key, dir); err != nil {
		return nil, err
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	tmp := path.Join(dir, tmpPrefix+hex.EncodeToString(id[:]))
	f, err := t.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s %q: creating the temporary file: %w", op, key, classify(err))
	}
	return &filePut{t: t, op: op, key: key, dir: dir, tmp: tmp, f: f, size: size, ifAbsent: ifAbsent}, nil
}

func (p *filePut) File() *os.File { return p.f }

// Abort closes and removes the temporary file.
func (p *filePut) Abort() { _ = p.end() }

// end closes the temporary file if still open and removes its name,
// returning an error only for a removal that failed.
func (p *filePut) end() error {
	if p.f != nil {
		_ = p.f.Close()
		p.f = nil
	}
	if err := p.t.root.Remove(p.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %q: removing the temporary file: %w", p.op, p.key, classify(err))
	}
	return nil
}

// Commit checks that the file holds exactly the Put's size, makes it
// durable and gives it its key: renamed over any object there, or for
// PutIfAbsent linked only if the key is free. Then the directory is made
// durable. Whatever happens, the Put is over.
func (p *filePut) Commit(ctx context.Context) (err error) {
	if p.f == nil {
		return fmt.Errorf("%s %q: committed after it ended: %w", p.op, p.key, plugins.ErrPermanent)
	}
	defer func() {
		if rerr := p.end(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	fi, err := p.f.Stat()
	if err != nil {
		return fmt.Errorf("%s %q: %w", p.op, p.key, classify(err))
	}
	if fi.Size() != p.size {
		return fmt.Errorf("%s %q: the file holds %d bytes, not the Put's %d: %w", p.op, p.key, fi.Size(), p.size, plugins.ErrPermanent)
	}
	if err := p.t.fsync(p.tmp, p.f); err != nil {
		return fmt.Errorf("%s %q: fsync: %w", p.op, p.key, classify(err))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %q: %w", p.op, p.key, err)
	}
	if p.ifAbsent {
		if err := p.t.link(p.f, p.dir, p.tmp, p.key); err != nil {
			return err
		}
	} else if err := p.t.root.Rename(p.tmp, p.key); err != nil {
		return fmt.Errorf("%s %q: rename into place: %w", p.op, p.key, p.t.conflict(p.key, err))
	}
	cerr := p.f.Close()
	p.f = nil
	if cerr != nil {
		return fmt.Errorf("%s %q: close: %w", p.op, p.key, classify(cerr))
	}
	return p.t.syncDir(p.dir)
}

// link creates key, in directory dir, as a second name of the fsynced
// temporary file f.
//
// If key exists, the object there is made durable — its data and its
// entry in dir — before ErrAlreadyExists: it may be one an earlier attempt
// of this same Put linked before its process died (or its directory fsync
// failed), and a retry that finds it takes it for its own and reports
// the Put done (Remote.PutIfAbsent). Any caller may rely on an object
// ErrAlreadyExists reported. (The directories above dir are durable
// already: begin's mkdirs saw to it.)
func (t *Target) link(f *os.File, dir, tmp, key string) error {
	err := t.root.Link(tmp, key)
	if err == nil {
		return nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("put-if-absent %q: link: %w", key, t.conflict(key, err))
	}
	if fi, serr := f.Stat(); serr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 2 {
			return nil // our link succeeded; only its reply was lost
		}
	}
	if err := t.syncExisting(key); err != nil {
		return fmt.Errorf("put-if-absent %q: the key exists, but making it durable failed: %w", key, err)
	}
	if err := t.syncDir(dir); err != nil {
		return fmt.Errorf("put-if-absent %q: the key exists, but making its directory entry durable failed: %w", key, err)
	}
	return fmt.Errorf("put-if-absent %q: %w", key, plugins.ErrAlreadyExists)
}

// syncExisting fsyncs the object under key, which link found there; a
// directory there is a permanent conflict, as for Put.
func (t *Target) syncExisting(key string) error {
	f, err := t.root.Open(key)
	if err != nil {
		return fmt.Errorf("opening the object to fsync: %w", classify(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return classify(err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%q is a directory of other keys, so it cannot be an object: %w", key, plugins.ErrPermanent)
	}
	if err := t.fsync(key, f); err != nil {
		return fmt.Errorf("fsync: %w", classify(err))
	}
	return nil
}

// conflict explains an error renaming or linking onto key: if key is a
// directory (it prefixes other keys) that is a permanent conflict.
func (t *Target) conflict(key string, err error) error {
	if fi, serr := t.root.Lstat(key); serr == nil && fi.IsDir() {
		return fmt.Errorf("%q is a directory of other keys, so it cannot be an object: %w", key, plugins.ErrPermanent)
	}
	return classify(err)
}

// mkdirs creates the directories of dir that are missing and makes each
// directory's entry in its parent durable (fsyncing the parent), once per
// process (durableDirs): also a directory it finds, which another Put may
// have created and not yet fsynced into its parent — or never will, its
// process having died — while the key the caller stores below it must be
// reachable after a crash once the Put returns.
func (t *Target) mkdirs(key, dir string) error {
	if dir == "." {
		return nil
	}
	segs := strings.Split(dir, "/")
	for i := range segs {
		p := strings.Join(segs[:i+1], "/")
		if _, ok := t.durableDirs.Load(p); ok {
			continue
		}
		err := t.root.Mkdir(p, 0o755)
		switch {
		case err == nil:
		case errors.Is(err, fs.ErrExist):
			fi, serr := t.root.Lstat(p)
			if serr != nil {
				return fmt.Errorf("put %q: %s: %w", key, p, classify(serr))
			}
			if !fi.IsDir() {
				return fmt.Errorf("put %q: %q is an object (or not a directory), so it cannot hold other keys: %w", key, p, plugins.ErrPermanent)
			}
		default:
			return fmt.Errorf("put %q: creating directory %q: %w", key, p, classify(err))
		}
		if err := t.syncDir(path.Dir(p)); err != nil {
			return fmt.Errorf("put %q: making directory %q durable: %w", key, p, err)
		}
		t.durableDirs.Store(p, struct{}{})
	}
	return nil
}

func (t *Target) syncDir(dir string) error {
	d, err := t.root.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %q to fsync: %w", dir, classify(err))
	}
	defer d.Close()
	if err := t.fsync(dir, d); err != nil {
		return fmt.Errorf("fsync directory %q: %w", dir, classify(err))
	}
	return nil
}

// missing reports whether err means "no such object".
func missing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// Get opens the object's file and reads the range from it.
func (t *Target) Get(_ context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	if err := plugins.ValidateKey(key); err != nil {
		return nil, 0, err
	}
	if err := t.check(); err != nil {
		return nil, 0, err
	}
	f, err := t.root.Open(key)
	if missing(err) {
		return nil, 0, fmt.Errorf("get %q: %w", key, plugins.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %q: %w", key, classify(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("get %q: %w", key, classify(err))
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("get %q: %w", key, plugins.ErrNotFound)
	}
	size := fi.Size()
	if offset < 0 || offset > size {
		f.Close()
		return nil, 0, fmt.Errorf("get %q: offset %d of a %d-byte object: %w", key, offset, size, plugins.ErrInvalidRange)
	}
	n := size - offset
	if length >= 0 {
		n = min(n, length)
	}
	return plugins.NewFileSection(f, key, offset, n), n, nil
}

// ServesFiles reports whether, in a plugin, the host should read and
// write the objects' files itself through descriptors the plugin passes
// (plugins.FileTarget): yes on a local filesystem. On a network or FUSE
// filesystem, whose calls can hang for as long as its server is away, the
// I/O stays in the plugin process (pipes), so a hung server stalls the
// plugin, which the host can kill, not the host's own threads.
func (t *Target) ServesFiles() bool { return t.local }

// Has stats each key.
func (t *Target) Has(ctx context.Context, keys []string) ([]bool, error) {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return nil, err
		}
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	out := make([]bool, len(keys))
	for i, k := range keys {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fi, err := t.root.Stat(k)
		switch {
		case err == nil:
			out[i] = fi.Mode().IsRegular()
		case missing(err):
		default:
			return nil, fmt.Errorf("has %q: %w", k, classify(err))
		}
	}
	return out, nil
}

// List walks the directories under prefix in key order: within a
// directory, entries sort by name with "/" appended to directory names,
// which is exactly the byte order of the keys below them.
func (t *Target) List(ctx context.Context, prefix, startAfter string) iter.Seq2[plugins.ObjectInfo, error] {
	return func(yield func(plugins.ObjectInfo, error) bool) {
		if err := plugins.ValidatePrefix(prefix); err != nil {
			yield(plugins.ObjectInfo{}, err)
			return
		}
		if err := t.check(); err != nil {
			yield(plugins.ObjectInfo{}, err)
			return
		}
		// Start at the deepest directory the prefix names in full.
		base := ""
		if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
			base = prefix[:i+1]
		}
		_ = t.walk(ctx, base, prefix, startAfter, yield)
	}
}

// walk lists directory dir ("" or ending in "/"), returning false once
// yield has asked to stop or an error was yielded.
func (t *Target) walk(ctx context.Context, dir, prefix, startAfter string, yield func(plugins.ObjectInfo, error) bool) bool {
	fail := func(err error) bool {
		yield(plugins.ObjectInfo{}, err)
		return false
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	name := strings.TrimSuffix(dir, "/")
	if name == "" {
		name = "."
	}
	d, err := t.root.Open(name)
	if missing(err) {
		return true
	}
	if err != nil {
		return fail(fmt.Errorf("list %q: %w", dir, classify(err)))
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fail(fmt.Errorf("list %q: %w", dir, classify(err)))
	}
	type entry struct {
		full  string // key, or directory path ending in "/"
		isDir bool
		ent   fs.DirEntry
	}
	list := make([]entry, 0, len(ents))
	for _, e := range ents {
		n := e.Name()
		if n == "" || n[0] == '.' {
			continue // temporary files and anything hidden
		}
		full := dir + n
		if e.IsDir() {
			full += "/"
		}
		// Keep entries that match the prefix or that the prefix continues into.
		if !strings.HasPrefix(full, prefix) && !strings.HasPrefix(prefix, full) {
			continue
		}
		list = append(list, entry{full: full, isDir: e.IsDir(), ent: e})
	}
	slices.SortFunc(list, func(a, b entry) int { return cmp.Compare(a.full, b.full) })
	for _, e := range list {
		if e.isDir {
			// Skip a directory whose keys all sort at or before startAfter.
			if startAfter != "" && e.full < startAfter && !strings.HasPrefix(startAfter, e.full) {
				continue
			}
			if !t.walk(ctx, e.full, prefix, startAfter, yield) {
				return false
			}
			continue
		}
		if e.full <= startAfter || !strings.HasPrefix(e.full, prefix) || plugins.ValidateKey(e.full) != nil || !e.ent.Type().IsRegular() {
			continue
		}
		fi, err := e.ent.Info()
		if missing(err) {
			continue // deleted since ReadDir
		}
		if err != nil {
			return fail(fmt.Errorf("list %q: %w", e.full, classify(err)))
		}
		if !yield(plugins.ObjectInfo{Key: e.full, Size: fi.Size()}, nil) {
			return false
		}
	}
	return true
}

// Delete removes each object's file (never a directory) and fsyncs the
// directories it removed from.
func (t *Target) Delete(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return err
		}
	}
	if err := t.check(); err != nil {
		return err
	}
	dirs := make(map[string]bool)
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := t.root.Lstat(k)
		if missing(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete %q: %w", k, classify(err))
		}
		if fi.IsDir() {
			continue // a directory of other keys, not an object
		}
		if err := t.root.Remove(k); err != nil && !missing(err) {
			return fmt.Errorf("delete %q: %w", k, classify(err))
		}
		dirs[path.Dir(k)] = true
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if err := t.syncDir(d); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
	}
	return nil
}

// Close stops the sweep of New and closes the root directory; it is
// idempotent.
func (t *Target) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	if t.stopSweep != nil {
		t.stopSweep()
		<-t.swept
	}
	return t.root.Close()
}
