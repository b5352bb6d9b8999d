package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/snapshot"
)

const (
	sigBlock  = 64 << 10
	sigBlocks = 256
)

// sigPattern is the content of block b written by generation gen.
func sigPattern(b, gen int) []byte {
	p := make([]byte, sigBlock)
	for i := 0; i < sigBlock; i += 16 {
		binary.LittleEndian.PutUint64(p[i:], uint64(b))
		binary.LittleEndian.PutUint64(p[i+8:], uint64(gen))
	}
	return p
}

// serveDirs makes a store and a FUSE mount directory, and registers a
// cleanup that releases anything a failed test left on them.
func serveDirs(t *testing.T) (store, mnt string) {
	t.Helper()
	base := t.TempDir()
	store, mnt = filepath.Join(base, "store"), filepath.Join(base, "fuse")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := CleanStale(context.Background(), mnt, nil); err != nil {
			t.Logf("cleanup: %v", err)
		}
		if mounted(t, mnt) {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return store, mnt
}

// mounted reports whether dir is a mount point in /proc/self/mountinfo.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	mi, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(mi, func(m mountEntry) bool { return m.mountPoint == dir })
}

// waitLoopFree waits until /dev/loopN has no backing file: the kernel
// clears an autoclear device when its last opener closes, which may
// finish after close(2) returns. Bounded by the test's deadline.
func waitLoopFree(t *testing.T, n int) {
	t.Helper()
	for BackingFile(n) != "" {
		if t.Context().Err() != nil {
			t.Fatalf("/dev/loop%d still attached to %q", n, BackingFile(n))
		}
		runtime.Gosched()
	}
}

func loopNumber(t *testing.T, dev string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(dev, "/dev/loop"))
	if err != nil {
		t.Fatalf("child printed device %q: %v", dev, err)
	}
	return n
}

// TestSIGTERMShutdown: a server process serving a volume through FUSE and
// a loop device gets SIGTERM while a client writes to the loop device with
// O_DIRECT. Every write acknowledged before the client sees an error is in
// the volume afterwards (the one in flight at the end may or may not be),
// the child exits 0, and the FUSE mount and the loop device are released.
func TestSIGTERMShutdown(t *testing.T) {
	requireRoot(t)
	store, mnt := serveDirs(t)
	c, dev := startServe(t, "STRATA_SERVE_STORE="+store, "STRATA_SERVE_MNT="+mnt,
		"STRATA_SERVE_SIZE="+strconv.Itoa(sigBlock*sigBlocks), "STRATA_SERVE_LOOP=1",
		"STRATA_SERVE_GRACE=1s")
	n := loopNumber(t, dev)

	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// O_DIRECT needs an aligned buffer: anonymous memory is page-aligned.
	buf, err := unix.Mmap(-1, 0, sigBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)

	acked := make([]int, sigBlocks) // generation acknowledged per block (0: none)
	inFlight, inFlightGen := -1, 0
	signalled := false
	var werr error
	for i := 0; ; i++ {
		b, gen := i%sigBlocks, i/sigBlocks+1
		copy(buf, sigPattern(b, gen))
		if _, werr = unix.Pwrite(fd, buf, int64(b)*sigBlock); werr != nil {
			inFlight, inFlightGen = b, gen
			break
		}
		acked[b] = gen
		// Signal once a few hundred writes are acknowledged, then keep
		// writing until the server's shutdown stops us.
		if i == 300 {
			if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			signalled = true
		}
	}
	if !signalled {
		t.Fatalf("write failed before SIGTERM: %v", werr)
	}
	t.Logf("client stopped after SIGTERM: %v", werr)
	if err := unix.Close(fd); err != nil {
		t.Errorf("close %s: %v", dev, err)
	}
	rest, err := c.wait()
	if err != nil {
		t.Fatalf("serve child: %v (stdout %q)", err, rest)
	}
	if !slices.Contains(rest, "CLEAN") {
		t.Errorf("serve child did not report a clean shutdown: %q", rest)
	}
	if mounted(t, mnt) {
		t.Errorf("FUSE mount %s still mounted after shutdown", mnt)
	}
	waitLoopFree(t, n)

	s, err := snapshot.OpenStore(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Open(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, sigBlock)
	for b := range sigBlocks {
		if _, err := v.ReadAt(got, int64(b)*sigBlock); err != nil {
			t.Fatal(err)
		}
		ok := bytes.Equal(got, sigPattern(b, acked[b])) || acked[b] == 0 && !slices.ContainsFunc(got, func(x byte) bool { return x != 0 })
		if b == inFlight {
			ok = ok || bytes.Equal(got, sigPattern(b, inFlightGen))
		}
		if !ok {
			t.Errorf("block %d: acknowledged generation %d is not in the volume (block holds gen %d)",
				b, acked[b], binary.LittleEndian.Uint64(got[8:]))
		}
	}
}

// TestSIGKILLStaleCleanup: a server with ext4 mounted on its loop device
// is killed with SIGKILL, leaving a dead FUSE mount, a loop device over
// it and the ext4 mount. The next server start cleans all three and
// serves again; its own SIGTERM shutdown then releases everything.
func TestSIGKILLStaleCleanup(t *testing.T) {
	requireRoot(t, "mkfs.ext4")
	store, mnt := serveDirs(t)
	ext4 := mkdir(t, "ext4")
	t.Cleanup(func() {
		if mounted(t, ext4) {
			_ = unix.Unmount(ext4, unix.MNT_DETACH)
		}
	})
	env := []string{"STRATA_SERVE_STORE=" + store, "STRATA_SERVE_MNT=" + mnt,
		"STRATA_SERVE_SIZE=" + strconv.Itoa(128<<20), "STRATA_SERVE_LOOP=1"}
	c, dev := startServe(t, append(env, "STRATA_SERVE_EXT4="+ext4)...)
	n := loopNumber(t, dev)
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.wait(); err == nil {
		t.Fatal("killed child exited 0")
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("statfs of the killed server's mount: %v, want ENOTCONN", err)
	}
	if !mounted(t, ext4) || !strings.HasPrefix(BackingFile(n), mnt+"/") {
		t.Fatalf("the kill left no stale state to clean: ext4 mounted %v, %s backed by %q",
			mounted(t, ext4), dev, BackingFile(n))
	}

	c2, dev2 := startServe(t, env...)
	if mounted(t, ext4) {
		t.Errorf("stale ext4 mount %s left after restart", ext4)
	}
	if !strings.Contains(c2.stderr.String(), "dead FUSE mount") {
		t.Errorf("restart did not report detaching the dead FUSE mount; stderr:\n%s", c2.stderr.String())
	}
	if dev2 != dev && BackingFile(n) != "" {
		t.Errorf("stale %s still backed by %q after restart", dev, BackingFile(n))
	}
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Errorf("statfs of the restarted mount: %v", err)
	}
	if err := c2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, err := c2.wait()
	if err != nil || !slices.Contains(rest, "CLEAN") {
		t.Fatalf("restarted child: %v, stdout %q", err, rest)
	}
	if mounted(t, mnt) {
		t.Errorf("FUSE mount %s still mounted after shutdown", mnt)
	}
	waitLoopFree(t, loopNumber(t, dev2))
}
