package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/blockdev"
)

// fuseSuperMagic is statfs(2)'s f_type of a FUSE filesystem.
const fuseSuperMagic = 0x65735546

// Options configures a mount. The zero value is the measured default.
type Options struct {
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// PageCache, if set, opens files through the kernel page cache instead
	// of FOPEN_DIRECT_IO. Off by default: a loop device or a filesystem on
	// top keeps its own cache, and double caching costs memory and a copy
	// (see defaultMountOptions).
	PageCache bool
	// MaxBackground is the number of asynchronous (background) requests
	// the kernel keeps in flight; 0 means 128.
	MaxBackground int
	// MaxWrite is the largest read or write request in bytes; 0 means
	// 1 MiB, the kernel's maximum (256 pages).
	MaxWrite int
	// Debug logs every FUSE request through Logger at debug level.
	Debug bool
}

// FS is a mounted Strata FUSE filesystem. Its methods are safe for
// concurrent use.
type FS struct {
	dir    string
	dev    uint64 // st_dev of the mount: the FUSE connection's id
	log    *slog.Logger
	opts   Options
	root   *rootNode
	srv    *fuse.Server
	served chan struct{} // closed when the server loop has ended

	mu       sync.Mutex
	released *sync.Cond // on mu: a file's last handle was released
	files    map[string]*fileNode
	detached map[*fileNode]bool // detached while open (Detach)
	closed   bool

	closeOnce sync.Once
	closeErr  error
}

var partRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validName reports whether name is "vol" or "vol@snap".
func validName(name string) bool {
	vol, snap, isSnap := cutAt(name)
	return partRE.MatchString(vol) && (!isSnap || partRE.MatchString(snap))
}

func cutAt(name string) (vol, snap string, ok bool) {
	for i := 0; i < len(name); i++ {
		if name[i] == '@' {
			return name[:i], name[i+1:], true
		}
	}
	return name, "", false
}

// defaultMountOptions returns go-fuse's mount options for o. The values
// were chosen by measurement on this project's 2-core VM (fio, io_uring,
// direct=1, 1 GiB file; benchmarks/RESULTS.md "FUSE (issue 4)"):
//
//   - MaxWrite 1 MiB: go-fuse derives max_pages (256) and max_read from
//     it, so a 1 MiB request is one FUSE round trip instead of eight at the
//     128 KiB default; sequential 1 MiB throughput depends on it.
//   - FOPEN_DIRECT_IO (set per open, unless Options.PageCache): every read
//     and write reaches the volume. The consumers are a loop device (whose
//     block layer and the filesystem above already cache) or fio/qemu with
//     O_DIRECT; a FUSE page cache below them would double the memory and
//     add a copy, and would make fsync write back pages instead of a
//     single Volume.Flush.
//   - FOPEN_PARALLEL_DIRECT_WRITES: without it the kernel takes the inode
//     lock for every direct write, so writes to one file (one volume) run
//     one at a time whatever the queue depth.
//   - CAP_ASYNC_DIO: io_uring and a loop device in direct-I/O mode submit
//     asynchronous direct I/O; with it, the kernel sends those requests
//     concurrently as background requests instead of one at a time per
//     caller.
//   - MaxBackground 128 (congestion threshold 96): async direct I/O
//     requests are background requests, and the default of 12 capped the
//     effective queue depth at 12 for QD32 random I/O.
//   - MaxReadAhead 0 (the kernel's default is kept only for PageCache):
//     readahead applies to the page cache, which direct I/O bypasses.
//   - Asynchronous reads (CAP_ASYNC_READ, go-fuse's default, SyncRead
//     false): several reads per handle in flight.
//   - DisableSplice: replies are built in memory, so splice only adds a
//     copy through a pipe.
//   - DirectMount: as root, mount(2) directly instead of fusermount3.
func defaultMountOptions(o *Options, log *slog.Logger) fuse.MountOptions {
	mo := fuse.MountOptions{
		FsName:        "strata",
		Name:          "strata",
		MaxWrite:      o.MaxWrite,
		MaxBackground: o.MaxBackground,
		DirectMount:   true,
		// CAP_ASYNC_DIO lets the kernel send concurrent async direct I/O.
		ExtraCapabilities: fuse.CAP_ASYNC_DIO,
		DisableXAttrs:     true,
		// Read replies come from memory (Volume.ReadAt fills a buffer):
		// splicing them through a pipe is one more copy, and 1 MiB replies
		// do not fit the default pipe.
		DisableSplice: true,
		Debug:         o.Debug,
		Logger:        slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		PanicHandler: func(p any) fuse.Status {
			log.Error("panic in FUSE handler", "panic", p)
			return fuse.EIO
		},
	}
	if o.Debug {
		mo.Logger = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	if mo.MaxWrite == 0 {
		mo.MaxWrite = 1 << 20
	}
	if mo.MaxBackground == 0 {
		mo.MaxBackground = 128
	}
	if !o.PageCache {
		mo.MaxReadAhead = 0
	}
	return mo
}

// Mount mounts an empty Strata filesystem on dir, which must exist. A
// dead FUSE mount left on dir by a killed server (stat answers ENOTCONN)
// is detached first; a live FUSE mount there fails with
// ErrMountPointBusy. Add files with FS.Add; unmount with FS.Close.
func Mount(ctx context.Context, dir string, opts *Options) (*FS, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	if err := cleanStaleMount(ctx, dir, log); err != nil {
		return nil, err
	}
	f := &FS{
		dir:      dir,
		log:      log.With("mount", dir),
		opts:     *opts,
		files:    make(map[string]*fileNode),
		detached: make(map[*fileNode]bool),
		served:   make(chan struct{}),
	}
	f.released = sync.NewCond(&f.mu)
	f.root = &rootNode{fsys: f}
	entry, attr, negative := time.Minute, time.Second, time.Duration(0)
	fo := &fs.Options{
		MountOptions: defaultMountOptions(opts, f.log),
		// Names change only through Add and Remove, which invalidate the
		// kernel's entries; sizes change only when a volume grows, so
		// attributes are cached for a second. No negative caching: a name
		// looked up before Add appears at once.
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		Logger:          slog.NewLogLogger(f.log.Handler(), slog.LevelWarn),
	}
	var raw fuse.RawFileSystem = fs.NewNodeFS(f.root, fo)
	if !opts.PageCache {
		raw = syncWrites{raw}
	}
	srv, err := fuse.NewServer(raw, dir, &fo.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	f.srv = srv
	// go-fuse's direct mount opens /dev/fuse without O_CLOEXEC: every
	// process started later (the backup plugins) would inherit the
	// connection and keep a killed server's mount alive, hanging
	// whoever touches it (the next start's stale-mount cleanup).
	if err := closeOnExecFUSE(); err != nil {
		f.log.Warn("cannot mark the FUSE connection close-on-exec", "err", err)
	}
	go func() {
		srv.Serve()
		close(f.served)
	}()
	if err := srv.WaitMount(); err != nil {
		_ = detach(dir)
		return nil, fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		_ = detach(dir)
		return nil, fmt.Errorf("fuse mount %s: stat after mount: %w", dir, err)
	}
	f.dev = st.Dev
	f.log.Info("mounted", "conn", connID(f.dev))
	return f, nil
}

// closeOnExecFUSE sets FD_CLOEXEC on every descriptor of this process
// open on /dev/fuse.
func closeOnExecFUSE() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// cleanStaleMount detaches a dead FUSE mount on dir and refuses a live
// one.
func cleanStaleMount(ctx context.Context, dir string, log *slog.Logger) error {
	// statfs always reaches the server (stat may be answered from the
	// kernel's attribute cache), so a dead one answers ENOTCONN.
	var sfs unix.Statfs_t
	err := unix.Statfs(dir, &sfs)
	if errors.Is(err, unix.ENOTCONN) {
		log.Warn("detaching a dead FUSE mount left by an earlier server", "mount", dir)
		if err := detach(dir); err != nil {
			return fmt.Errorf("fuse mount %s: detach dead mount: %w", dir, err)
		}
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	if sfs.Type != fuseSuperMagic {
		return nil
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return fmt.Errorf("fuse mount %s: %w", dir, err)
	}
	if parent.Dev != st.Dev {
		return fmt.Errorf("fuse mount %s: %w", dir, ErrMountPointBusy)
	}
	return nil
}

// detach lazily unmounts dir: it leaves the namespace at once and the
// filesystem ends when its last open file is closed.
func detach(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if errors.Is(err, unix.EPERM) {
		// Not root: fusermount3 is setuid and may unmount our own mounts.
		out, xerr := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput()
		if xerr != nil {
			return fmt.Errorf("fusermount3 -u -z %s: %w: %s", dir, xerr, out)
		}
		return nil
	}
	if errors.Is(err, unix.EINVAL) {
		return nil // not mounted any more
	}
	return err
}

// connID is the FUSE connection's name under /sys/fs/fuse/connections:
// the kernel's internal dev_t of the superblock.
func connID(dev uint64) uint64 { return uint64(unix.Major(dev))<<20 | uint64(unix.Minor(dev)) }

const fusectlDir = "/sys/fs/fuse/connections"

// abort aborts the FUSE connection: requests not yet answered fail with
// ENOTCONN and the server loop ends.
func (f *FS) abort() error {
	p := filepath.Join(fusectlDir, fmt.Sprint(connID(f.dev)), "abort")
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		// fusectl is not mounted on this host; mount it (root only).
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount fusectl on %s: %w", fusectlDir, err)
		}
	}
	err := os.WriteFile(p, []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the connection has already ended
	}
	if err != nil {
		return fmt.Errorf("abort FUSE connection: %w", err)
	}
	return nil
}

// Dir returns the mount point.
func (f *FS) Dir() string { return f.dir }

// Path returns the path of name's file in the mount.
func (f *FS) Path(name string) string { return filepath.Join(f.dir, name) }

// Add puts vol in the mount as a file named vol.Name(): read-write for a
// volume's head, read-only (mode 0444) when vol.ReadOnly(). The caller
// keeps ownership of vol and must not close it before Remove succeeds or
// Close returns. It fails with ErrInvalidName, ErrExists or ErrClosed.
func (f *FS) Add(vol blockdev.Volume) error {
	name := vol.Name()
	if !validName(name) {
		return fmt.Errorf("fuse add %q: %w", name, ErrInvalidName)
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return fmt.Errorf("fuse add %q: %w", name, ErrClosed)
	}
	if _, ok := f.files[name]; ok {
		f.mu.Unlock()
		return fmt.Errorf("fuse add %q: %w", name, ErrExists)
	}
	n := &fileNode{fsys: f, vol: vol, name: name, added: time.Now()}
	f.files[name] = n
	ino := f.root.NewPersistentInode(context.Background(), n, fs.StableAttr{Mode: syscall.S_IFREG})
	f.root.AddChild(name, ino, false)
	f.mu.Unlock()
	// Outside f.mu: the kernel may be waiting on a handler that needs it.
	f.notifyEntry(name)
	f.log.Info("added", "volume", name, "size", vol.Size(), "readonly", vol.ReadOnly())
	return nil
}

// Remove takes name's file out of the mount. It fails with ErrNotFound,
// ErrBusy while the file is open (detach the loop device first), or
// ErrClosed. After it returns the device is no longer used through the
// mount.
func (f *FS) Remove(name string) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return fmt.Errorf("fuse remove %q: %w", name, ErrClosed)
	}
	n, ok := f.files[name]
	if ok {
		f.waitReleasedLocked(n)
	}
	switch {
	case !ok:
		f.mu.Unlock()
		return fmt.Errorf("fuse remove %q: %w", name, ErrNotFound)
	case n.open > 0:
		open := n.open
		f.mu.Unlock()
		return fmt.Errorf("fuse remove %q: %d open handles: %w", name, open, ErrBusy)
	}
	n.removed = true
	delete(f.files, name)
	f.root.RmChild(name)
	f.mu.Unlock()
	f.notifyEntry(name)
	if n.written.Load() {
		// Writes through the mount are durable once the file leaves it.
		if err := n.vol.Flush(context.Background()); err != nil {
			return fmt.Errorf("fuse remove %q: flush: %w", name, err)
		}
	}
	f.log.Info("removed", "volume", name)
	return nil
}

// Detach takes a read-only file out of the mount even while it is open,
// as unlink(2) does: the name leaves at once (a new file may take it), the
// handles already open keep reading the same device, and done runs when
// the last of them is released (at once if none is open), or when the
// mount is closed. A snapshot deleted while its file is open must not keep
// its name: a snapshot made later under that name would be shadowed by the
// old one's file. A writable file is only removed while closed, as by
// Remove (ErrBusy otherwise). Detach fails with ErrNotFound or ErrClosed.
func (f *FS) Detach(name string, done func()) error {
	f.mu.Lock()
	n, ok := f.files[name]
	if !ok || f.closed || n.open == 0 || !n.vol.ReadOnly() {
		f.mu.Unlock()
		if err := f.Remove(name); err != nil {
			return err
		}
		done()
		return nil
	}
	n.removed = true
	n.onClosed = done
	f.detached[n] = true
	delete(f.files, name)
	f.root.RmChild(name)
	open := n.open
	f.mu.Unlock()
	f.notifyEntry(name)
	f.log.Info("detached; released when its open handles are closed", "volume", name, "open", open)
	return nil
}

// Resized tells the kernel that name's device changed size: its cached
// attributes are dropped, and the file's size is read again at once, so
// that a loop device over the file can take the new size
// (attach.Loop.UpdateSize). It fails with ErrNotFound or ErrClosed.
func (f *FS) Resized(name string) error {
	f.mu.Lock()
	n, ok := f.files[name]
	closed := f.closed
	f.mu.Unlock()
	switch {
	case closed:
		return fmt.Errorf("fuse resized %q: %w", name, ErrClosed)
	case !ok:
		return fmt.Errorf("fuse resized %q: %w", name, ErrNotFound)
	}
	if errno := n.NotifyContent(-1, 0); errno != 0 && errno != syscall.ENOENT {
		return fmt.Errorf("fuse resized %q: invalidate attributes: %w", name, errno)
	}
	// The kernel's inode size is refreshed by the next getattr; a loop
	// device reads it without one.
	if _, err := os.Stat(f.Path(name)); err != nil {
		return fmt.Errorf("fuse resized %q: %w", name, err)
	}
	return nil
}

// releaseWait is how long Remove waits for an open file's handles to be
// released. The kernel sends RELEASE asynchronously after the last close
// (a loop device's detach among them), so a file closed a moment ago may
// still count as open: without the wait, `detach` then `rm` of a volume
// could fail as in use.
const releaseWait = time.Second

// waitReleasedLocked waits, holding f.mu, until n has no open handle or
// releaseWait has passed.
func (f *FS) waitReleasedLocked(n *fileNode) {
	if n.open == 0 {
		return
	}
	deadline := time.Now().Add(releaseWait)
	t := time.AfterFunc(releaseWait, func() {
		f.mu.Lock()
		f.released.Broadcast()
		f.mu.Unlock()
	})
	defer t.Stop()
	for n.open > 0 && time.Now().Before(deadline) {
		f.released.Wait()
	}
}

// notifyEntry drops the kernel's cached entry for name, if any.
func (f *FS) notifyEntry(name string) {
	if errno := f.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		f.log.Warn("invalidate kernel entry", "volume", name, "err", errno)
	}
}

// Names lists the files in the mount, sorted.
func (f *FS) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.files))
	for name := range f.files {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Close unmounts the filesystem. It detaches the mount at once (no new
// opens), then waits until the files still open are closed (a loop device
// detached, a process exiting) or ctx ends; then it aborts the connection,
// so requests not yet started fail with ENOTCONN while those being served
// run to completion. Finally it flushes every device written through the
// mount, even if ctx has ended. The devices stay the caller's. Close is
// idempotent and returns the first call's result.
func (f *FS) Close(ctx context.Context) error {
	f.closeOnce.Do(func() { f.closeErr = f.close(ctx, false) })
	return f.closeErr
}

// Abandon is Close for a mount that must stay where it is: something still
// uses a file in it that could not be let go (a filesystem mounted on a
// loop device over it, busy at shutdown). The connection is aborted rather
// than the mount detached, so the dead mount stays at Dir, and the next
// start's attach.CleanStale finds those loop devices by their backing
// files' paths below it (a lazily detached mount renames them out of
// sight, and they stayed attached for good).
func (f *FS) Abandon(ctx context.Context) error {
	f.closeOnce.Do(func() { f.closeErr = f.close(ctx, true) })
	return f.closeErr
}

func (f *FS) close(ctx context.Context, keepMount bool) error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	var errs []error
	if keepMount {
		f.log.Warn("leaving the FUSE mount in place, dead: files in it are still in use (the next start cleans up)")
		if err := f.abort(); err != nil {
			errs = append(errs, fmt.Errorf("fuse abandon %s: %w", f.dir, err))
		} else {
			<-f.served
		}
	} else {
		if err := detach(f.dir); err != nil {
			errs = append(errs, fmt.Errorf("fuse unmount %s: %w", f.dir, err))
		}
		select {
		case <-f.served:
		case <-ctx.Done():
			if err := f.abortAndWait(ctx); err != nil {
				errs = append(errs, fmt.Errorf("fuse unmount %s: %w", f.dir, err))
			}
		}
	}
	flushCtx := context.WithoutCancel(ctx)
	f.mu.Lock()
	nodes := make([]*fileNode, 0, len(f.files))
	for _, n := range f.files {
		nodes = append(nodes, n)
	}
	var done []func()
	for n := range f.detached {
		done = append(done, n.onClosed)
		n.onClosed = nil
	}
	clear(f.detached)
	f.mu.Unlock()
	for _, n := range nodes {
		if !n.written.Load() {
			continue
		}
		if err := n.vol.Flush(flushCtx); err != nil {
			errs = append(errs, fmt.Errorf("fuse unmount %s: flush %q: %w", f.dir, n.name, err))
		}
	}
	for _, d := range done {
		d()
	}
	f.log.Info("unmounted")
	return errors.Join(errs...)
}

// abortAndWait aborts the connection unless it has just ended, and waits
// for the server loop, which ends once the handlers in flight return.
func (f *FS) abortAndWait(ctx context.Context) error {
	select {
	case <-f.served:
		return nil
	default:
	}
	f.log.Warn("files still open when the shutdown deadline passed; aborting the FUSE connection", "err", ctx.Err())
	if err := f.abort(); err != nil {
		return err
	}
	<-f.served
	return nil
}

// Done is closed when the mount has ended: after Close, or when it was
// unmounted or aborted from outside.
func (f *FS) Done() <-chan struct{} { return f.served }

// syncWrites makes a write durable before it is answered when the kernel
// marks it O_DSYNC: the file was opened with O_SYNC or O_DSYNC, or the
// write itself asked (pwritev2 RWF_DSYNC, an io_uring write with
// RWF_DSYNC). For FOPEN_DIRECT_IO files the kernel only passes the flag on
// in the request (fuse_write_in.flags) and sends no fsync afterwards, and
// go-fuse's FileWriter does not see the flags, so the write is followed by
// the handle's Fsync (Volume.Flush) here. In page-cache mode the kernel
// sends the fsync itself (generic_write_sync).
type syncWrites struct{ fuse.RawFileSystem }

func (s syncWrites) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, st := s.RawFileSystem.Write(cancel, in, data)
	return s.sync(cancel, in, n, st)
}

func (s syncWrites) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	n, st := s.RawFileSystem.Writev(cancel, in, data)
	return s.sync(cancel, in, n, st)
}

func (s syncWrites) sync(cancel <-chan struct{}, in *fuse.WriteIn, n uint32, st fuse.Status) (uint32, fuse.Status) {
	if st != fuse.OK || in.Flags&syscall.O_DSYNC == 0 {
		return n, st
	}
	if st := s.RawFileSystem.Fsync(cancel, &fuse.FsyncIn{InHeader: in.InHeader, Fh: in.Fh}); st != fuse.OK {
		return 0, st
	}
	return n, st
}
