package fuse

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/blockdev"
)

const mib = 1 << 20

// fill returns n bytes of a pattern derived from seed.
func fill(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed ^ byte(i*7+i>>12)
	}
	return b
}

func openFile(t *testing.T, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestFileSemantics checks each operation on a volume's file and a
// snapshot's file against the errors the package documents.
func TestFileSemantics(t *testing.T) {
	requireFUSE(t)
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-a", 16*mib)
	if _, err := v.WriteAt(fill(1, mib), 0); err != nil {
		t.Fatal(err)
	}
	snap := testSnapshot(t, v, "s1")
	f := testMount(t, nil)
	for _, d := range []blockdev.Volume{blockdev.FromSnapshot(v), snap} {
		if err := f.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir(f.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, ","), "vol-a,vol-a@s1"; got != want {
		t.Errorf("readdir: %s, want %s", got, want)
	}
	for _, tc := range []struct {
		name string
		mode fs.FileMode
	}{
		{name: "vol-a", mode: 0o644},
		{name: "vol-a@s1", mode: 0o444},
	} {
		st, err := os.Stat(f.Path(tc.name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != 16*mib || st.Mode() != tc.mode {
			t.Errorf("%s: size %d mode %v, want %d %v", tc.name, st.Size(), st.Mode(), 16*mib, tc.mode)
		}
	}

	rw := openFile(t, f.Path("vol-a"), os.O_RDWR)
	ro := openFile(t, f.Path("vol-a@s1"), os.O_RDONLY)
	if _, err := rw.WriteAt(fill(2, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func() error
		want error // nil: success
	}{
		{name: "read back a write", op: func() error {
			return expectRead(rw, 4096, fill(2, 8192))
		}},
		{name: "snapshot keeps the old data", op: func() error {
			return expectRead(ro, 0, fill(1, mib))
		}},
		{name: "read at the end returns nothing", op: func() error {
			n, err := rw.ReadAt(make([]byte, 10), 16*mib)
			if n != 0 || err == nil {
				return errors.New("read past the end returned data")
			}
			return nil
		}},
		{name: "write crossing the end", want: unix.EFBIG, op: func() error {
			_, err := rw.WriteAt(make([]byte, 8192), 16*mib-4096)
			return err
		}},
		{name: "truncate to another size", want: unix.EPERM, op: func() error {
			return rw.Truncate(8 * mib)
		}},
		{name: "truncate to the same size", op: func() error {
			return rw.Truncate(16 * mib)
		}},
		{name: "open a snapshot for writing", want: unix.EROFS, op: func() error {
			g, err := os.OpenFile(f.Path("vol-a@s1"), os.O_RDWR, 0)
			if err == nil {
				g.Close()
			}
			return err
		}},
		{name: "plain fallocate", want: unix.EOPNOTSUPP, op: func() error {
			return unix.Fallocate(int(rw.Fd()), 0, 0, 4096)
		}},
		{name: "collapse range", want: unix.EOPNOTSUPP, op: func() error {
			return unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096)
		}},
		{name: "zero range reads zeros", op: func() error {
			if err := unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 100, 10000); err != nil {
				return err
			}
			want := fill(1, mib)[:20000]
			copy(want[4096:], fill(2, 8192))
			clear(want[100:10100])
			return expectRead(rw, 0, want)
		}},
		{name: "zero range past the end without KEEP_SIZE", want: unix.EFBIG, op: func() error {
			return unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_ZERO_RANGE, 16*mib-4096, 8192)
		}},
		{name: "punch hole past the end is clipped", op: func() error {
			if err := unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 16*mib-4096, 1<<30); err != nil {
				return err
			}
			return expectRead(rw, 16*mib-4096, make([]byte, 4096))
		}},
		{name: "fsync", op: rw.Sync},
		{name: "unknown name", want: unix.ENOENT, op: func() error {
			_, err := os.Stat(f.Path("vol-b"))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if tc.want == nil && err != nil {
				t.Fatalf("got %v, want success", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func expectRead(f *os.File, off int64, want []byte) error {
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, off); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("read returned other data")
	}
	return nil
}

// countingVolume counts Flush calls.
type countingVolume struct {
	blockdev.Volume
	flushes atomic.Int64
}

func (c *countingVolume) Flush(ctx context.Context) error {
	c.flushes.Add(1)
	return c.Volume.Flush(ctx)
}

// TestFsyncAndCloseFlush: fsync of the file reaches Volume.Flush, and so
// does close of a descriptor that wrote; close after only reads does not.
func TestFsyncAndCloseFlush(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-f", 4*mib)
	cv := &countingVolume{Volume: blockdev.FromSnapshot(v)}
	f := testMount(t, nil)
	if err := f.Add(cv); err != nil {
		t.Fatal(err)
	}
	h, err := os.OpenFile(f.Path("vol-f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(fill(3, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := cv.flushes.Load(); n != 1 {
		t.Errorf("after fsync: %d flushes, want 1", n)
	}
	if _, err := h.WriteAt(fill(4, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if n := cv.flushes.Load(); n != 2 {
		t.Errorf("after close of a written descriptor: %d flushes, want 2", n)
	}
	r, err := os.Open(f.Path("vol-f"))
	if err != nil {
		t.Fatal(err)
	}
	if err := expectRead(r, 4096, fill(4, 4096)); err != nil {
		t.Error(err)
	}
	r.Close()
	if n := cv.flushes.Load(); n != 2 {
		t.Errorf("after close of a read-only descriptor: %d flushes, want 2", n)
	}
}

// TestSyncWrites: a write the kernel marks O_DSYNC — the file opened with
// O_DSYNC, or the write's own RWF_DSYNC — reaches Volume.Flush before it
// returns; a plain write does not. Before, a direct-I/O write with
// RWF_DSYNC on a handle opened without O_DSYNC was acknowledged unflushed.
func TestSyncWrites(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-s", 4*mib)
	cv := &countingVolume{Volume: blockdev.FromSnapshot(v)}
	f := testMount(t, nil)
	if err := f.Add(cv); err != nil {
		t.Fatal(err)
	}
	plain := openFile(t, f.Path("vol-s"), os.O_RDWR)
	dsync := openFile(t, f.Path("vol-s"), os.O_RDWR|os.O_SYNC)
	buf := fill(5, 4096)
	for _, tc := range []struct {
		name  string
		write func() error
		want  int64 // flushes the write makes
	}{
		{"pwrite", func() error { _, err := plain.WriteAt(buf, 0); return err }, 0},
		{"pwritev2 RWF_DSYNC", func() error {
			_, err := unix.Pwritev2(int(plain.Fd()), [][]byte{buf}, 4096, unix.RWF_DSYNC)
			return err
		}, 1},
		{"O_SYNC handle", func() error { _, err := dsync.WriteAt(buf, 8192); return err }, 1},
	} {
		before := cv.flushes.Load()
		if err := tc.write(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := cv.flushes.Load() - before; got != tc.want {
			t.Errorf("%s: %d flushes, want %d", tc.name, got, tc.want)
		}
	}
}

// TestAddRemove: files appear and disappear while mounted; Remove refuses
// an open file.
func TestAddRemove(t *testing.T) {
	s, _ := testStore(t)
	a := testVolume(t, s, "vol-a", 4*mib)
	f := testMount(t, nil)
	// Looked up before Add: the negative result must not be cached.
	if _, err := os.Stat(f.Path("vol-a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat before Add: %v", err)
	}
	if err := f.Add(blockdev.FromSnapshot(a)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Path("vol-a")); err != nil {
		t.Fatalf("stat after Add: %v", err)
	}
	if err := f.Add(blockdev.FromSnapshot(a)); !errors.Is(err, ErrExists) {
		t.Errorf("second Add: %v, want ErrExists", err)
	}
	h, err := os.Open(f.Path("vol-a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Remove("vol-a"); !errors.Is(err, ErrBusy) {
		t.Errorf("Remove of an open file: %v, want ErrBusy", err)
	}
	h.Close()
	// The kernel sends RELEASE after close returns: Remove waits for it.
	if err := f.Remove("vol-a"); err != nil {
		t.Fatalf("Remove right after close: %v", err)
	}
	if _, err := os.Stat(f.Path("vol-a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after Remove: %v, want not exist", err)
	}
	if err := f.Remove("vol-a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "Vol", "a/b", "a@b@c", "..", "-x", "a@"} {
		if err := f.Add(namedVolume{Volume: blockdev.FromSnapshot(a), name: bad}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Add %q: %v, want ErrInvalidName", bad, err)
		}
	}
	if got := f.Names(); len(got) != 0 {
		t.Errorf("Names after Remove: %v", got)
	}
}

type namedVolume struct {
	blockdev.Volume
	name string
}

func (n namedVolume) Name() string { return n.name }

// TestPunchHoleFreesSpace: fallocate PUNCH_HOLE on the FUSE file reads back
// zeros, reports a hole, and frees the head layer's blocks on disk.
func TestPunchHoleFreesSpace(t *testing.T) {
	s, storeDir := testStore(t)
	v := testVolume(t, s, "vol-p", 64*mib)
	f := testMount(t, nil)
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		t.Fatal(err)
	}
	h := openFile(t, f.Path("vol-p"), os.O_RDWR)
	if _, err := h.WriteAt(fill(5, 32*mib), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, filepath.Join(storeDir, "layers"))
	if err := unix.Fallocate(int(h.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4*mib, 16*mib); err != nil {
		t.Fatal(err)
	}
	if err := h.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := expectRead(h, 4*mib, make([]byte, 16*mib)); err != nil {
		t.Errorf("punched range: %v", err)
	}
	if err := expectRead(h, 20*mib, fill(5, 32*mib)[20*mib:]); err != nil {
		t.Errorf("after the punched range: %v", err)
	}
	ext, err := v.Extents(t.Context(), 4*mib, 16*mib)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0].Kind != blockdev.ExtentHole || ext[0].Length != 16*mib {
		t.Errorf("extents of the punched range: %+v, want one 16 MiB hole", ext)
	}
	after := allocated(t, filepath.Join(storeDir, "layers"))
	if freed := before - after; freed < 16*mib {
		t.Errorf("punching 16 MiB freed %d bytes in the layer files (%d → %d)", freed, before, after)
	}
}

// allocated sums the allocated bytes (st_blocks) of the files under dir.
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// TestFioVerify runs fio with crc32c verification on the FUSE file
// (io_uring, O_DIRECT, queue depth 32, mixed block sizes).
func TestFioVerify(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		skipOrFail(t, "needs fio (scripts/deps.sh installs it)")
	}
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-fio", 128*mib)
	f := testMount(t, nil)
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), "fio", "--name=verify", "--filename="+f.Path("vol-fio"),
		"--ioengine=io_uring", "--direct=1", "--rw=randwrite", "--bsrange=4k-1m", "--iodepth=32",
		"--size=128M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--verify_state_save=0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio verify: %v\n%s", err, out)
	}
}

// TestConcurrentWriters: many goroutines write and read back their own
// regions through the file at once; the volume holds every write.
func TestConcurrentWriters(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-c", 64*mib)
	f := testMount(t, nil)
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		t.Fatal(err)
	}
	const writers, region = 16, 4 * mib
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			h, err := os.OpenFile(f.Path("vol-c"), os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer h.Close()
			data := fill(byte(w), region)
			// Unaligned pieces so the store sees partial blocks too.
			for off := 0; off < region; off += 65536 + 100 {
				end := min(off+65536+100, region)
				if _, err := h.WriteAt(data[off:end], int64(w*region+off)); err != nil {
					errs <- err
					return
				}
			}
			if err := expectRead(h, int64(w*region), data); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for w := range writers {
		got := make([]byte, region)
		if _, err := v.ReadAt(got, int64(w*region)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, fill(byte(w), region)) {
			t.Errorf("writer %d: the volume holds other data", w)
		}
	}
}

// TestStaleMount: a mount whose server is gone (connection aborted) is
// detached by the next Mount on the directory; a live mount is refused.
func TestStaleMount(t *testing.T) {
	f := testMount(t, nil)
	if _, err := Mount(t.Context(), f.Dir(), nil); !errors.Is(err, ErrMountPointBusy) {
		t.Fatalf("Mount over a live mount: %v, want ErrMountPointBusy", err)
	}
	// Kill the connection as a SIGKILLed server would (its /dev/fuse
	// descriptor closing aborts it the same way).
	if err := f.abort(); err != nil {
		t.Fatal(err)
	}
	<-f.Done()
	var sfs unix.Statfs_t
	if err := unix.Statfs(f.Dir(), &sfs); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("statfs of the aborted mount: %v, want ENOTCONN", err)
	}
	g, err := Mount(t.Context(), f.Dir(), nil)
	if err != nil {
		t.Fatalf("Mount over a dead mount: %v", err)
	}
	if err := g.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Dir()); err != nil {
		t.Fatalf("stat after Close: %v", err)
	}
}

// TestCloseAbortsOpenFiles: Close waits for open files until its context
// ends, then aborts; the writes acknowledged before are flushed.
func TestCloseAbortsOpenFiles(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-x", 4*mib)
	cv := &countingVolume{Volume: blockdev.FromSnapshot(v)}
	f := testMount(t, nil)
	if err := f.Add(cv); err != nil {
		t.Fatal(err)
	}
	h := openFile(t, f.Path("vol-x"), os.O_RDWR)
	if _, err := h.WriteAt(fill(9, 4096), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if cv.flushes.Load() == 0 {
		t.Error("Close did not flush the written volume")
	}
	if _, err := h.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Error("read through a handle of an aborted mount succeeded")
	}
	if err := f.Add(cv); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v, want ErrClosed", err)
	}
}

// TestChildrenDoNotInheritTheConnection: a process started after the
// mount (a backup plugin) must not hold /dev/fuse, or a SIGKILLed server's
// mount stays alive in the child and hangs whoever touches it.
func TestChildrenDoNotInheritTheConnection(t *testing.T) {
	testMount(t, nil)
	out, err := exec.Command("sh", "-c", "ls -l /proc/$$/fd").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child process inherited the FUSE connection:\n%s", out)
	}
}

// TestRemoveAfterClose: a file closed a moment ago is removed, although
// the kernel's RELEASE of its handle may not have arrived yet. Before,
// Remove failed with ErrBusy then (detach, then rm of a volume failed as
// in use).
func TestRemoveAfterClose(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-r", 4*mib)
	f := testMount(t, nil)
	for i := range 50 {
		if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
			t.Fatal(err)
		}
		h, err := os.OpenFile(f.Path("vol-r"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(fill(byte(i), 4096), 0); err != nil {
			t.Fatal(err)
		}
		h.Close()
		if err := f.Remove("vol-r"); err != nil {
			t.Fatalf("round %d: Remove right after close: %v", i, err)
		}
	}
}

// TestDetach checks that a read-only file detached while open leaves the
// mount at once, keeps serving its open handle, and releases its device
// when that handle is closed; a new file can take the name meanwhile.
func TestDetach(t *testing.T) {
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-a", 4*mib)
	if _, err := v.WriteAt(fill(1, mib), 0); err != nil {
		t.Fatal(err)
	}
	old := testSnapshot(t, v, "s1")
	if _, err := v.WriteAt(fill(2, mib), 0); err != nil {
		t.Fatal(err)
	}
	newer := testSnapshot(t, v, "s2")
	f := testMount(t, nil)
	if err := f.Add(old); err != nil {
		t.Fatal(err)
	}
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		t.Fatal(err)
	}
	h := openFile(t, f.Path("vol-a@s1"), os.O_RDONLY)
	w := openFile(t, f.Path("vol-a"), os.O_RDWR)
	if err := f.Detach("vol-a", func() {}); !errors.Is(err, ErrBusy) {
		t.Errorf("Detach of an open writable file: %v, want ErrBusy", err)
	}
	w.Close()
	released := make(chan struct{})
	if err := f.Detach("vol-a@s1", func() { close(released) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-released:
		t.Fatal("Detach released the device of an open file")
	default:
	}
	if _, err := os.Stat(f.Path("vol-a@s1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after Detach: %v, want not exist", err)
	}
	// The snapshot is made again under the same name.
	if err := f.Add(namedVolume{Volume: newer, name: "vol-a@s1"}); err != nil {
		t.Fatalf("Add under a detached file's name: %v", err)
	}
	nh := openFile(t, f.Path("vol-a@s1"), os.O_RDONLY)
	if err := expectRead(nh, 0, fill(2, mib)); err != nil {
		t.Errorf("new file: %v", err)
	}
	nh.Close()
	if err := expectRead(h, 0, fill(1, mib)); err != nil {
		t.Errorf("detached file's open handle: %v", err)
	}
	h.Close()
	<-released // the kernel's RELEASE follows close; bounded by the test deadline
	// A closed file is removed and released (at once, or when the
	// kernel's RELEASE of nh arrives).
	released = make(chan struct{})
	if err := f.Detach("vol-a@s1", func() { close(released) }); err != nil {
		t.Errorf("Detach of a closed file: %v", err)
	}
	<-released
	if err := f.Detach("vol-a@s1", func() {}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Detach of a missing file: %v, want ErrNotFound", err)
	}
}

// TestFileTimes: a volume's file reports the current time as its
// modification time (its content changes through NBD too, unseen by the
// mount, so a tool skipping files whose time has not moved must never
// skip it); a snapshot's file, whose content never changes, keeps the
// time it appeared. Before, both said 1970.
func TestFileTimes(t *testing.T) {
	requireFUSE(t)
	s, _ := testStore(t)
	v := testVolume(t, s, "vol-t", 4*mib)
	snap := testSnapshot(t, v, "s1")
	f := testMount(t, nil)
	before := time.Now().Add(-time.Second)
	for _, d := range []blockdev.Volume{blockdev.FromSnapshot(v), snap} {
		if err := f.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	stat := func(name string) time.Time {
		t.Helper()
		fi, err := os.Stat(filepath.Join(f.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	snapTime := stat("vol-t@s1")
	if snapTime.Before(before) || snapTime.After(time.Now()) {
		t.Errorf("snapshot file mtime %v, want the time it was added (after %v)", snapTime, before)
	}
	time.Sleep(1100 * time.Millisecond) // past the kernel's attribute cache
	if got := stat("vol-t"); time.Since(got) > time.Second {
		t.Errorf("volume file mtime %v, want now", got)
	}
	if got := stat("vol-t@s1"); !got.Equal(snapTime) {
		t.Errorf("snapshot file mtime moved: %v, then %v", snapTime, got)
	}
}
