package nbd

// Acceptance tests with real NBD clients from Debian packages (libnbd-bin,
// python3-libnbd, qemu-utils, fio), served from a real snapshot store.
// scripts/deps.sh installs them; a missing client skips the test with the
// reason, or fails it under CI=true.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/snapshot"
)

// needClients skips (or under CI fails) unless every command is on PATH.
func needClients(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			msg := fmt.Sprintf("%s not on PATH (run scripts/deps.sh to install the NBD clients): %v", c, err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

func nbdURI(sock, export string) string { return "nbd+unix:///" + export + "?socket=" + sock }

// runCmd runs a client and returns its stdout; it fails the test with the
// output if the command fails.
func runCmd(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := runCmdErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runCmdErr(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	return runCmdEnv(t, nil, name, args...)
}

// runCmdEnv runs a client with extra environment variables.
func runCmdEnv(t *testing.T, env []string, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files in its working directory
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), err
	}
	return stdout.Bytes(), nil
}

// strataFixture is a snapshot store with one volume, its snapshots
// exported read-only beside its head.
type strataFixture struct {
	store   *snapshot.Store
	vol     *snapshot.Volume
	exports *MapExports
	views   map[string]*snapshot.View
}

func newStrataFixture(t *testing.T, size int64) *strataFixture {
	t.Helper()
	store, err := snapshot.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := store.Create(t.Context(), "vol", size)
	if err != nil {
		t.Fatal(err)
	}
	fx := &strataFixture{store: store, vol: vol, exports: NewMapExports(), views: map[string]*snapshot.View{}}
	if err := fx.exports.Add(blockdev.FromSnapshot(vol), "volume vol"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, v := range fx.views {
			_ = v.Close()
		}
		if err := vol.Close(); err != nil {
			t.Errorf("close volume: %v", err)
		}
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return fx
}

// snapshot takes snapshot name of the head and exports it as vol@name.
func (fx *strataFixture) snapshot(t *testing.T, name string) *snapshot.View {
	t.Helper()
	if err := fx.vol.Snapshot(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	vw, err := fx.vol.OpenSnapshot(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	fx.views[name] = vw
	if err := fx.exports.Add(blockdev.FromView(vw), "snapshot "+name); err != nil {
		t.Fatal(err)
	}
	return vw
}

func (fx *strataFixture) write(t *testing.T, off int64, p []byte) {
	t.Helper()
	if _, err := fx.vol.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

// mapEntry is one line of nbdinfo --map --json.
type mapEntry struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Type   uint32 `json:"type"`
}

// wantMap converts device extents to base:allocation flags, merging
// neighbours with equal flags as nbdinfo does.
func wantMap(t *testing.T, dev blockdev.Volume) []mapEntry {
	t.Helper()
	exts, err := dev.Extents(t.Context(), 0, dev.Size())
	if err != nil {
		t.Fatal(err)
	}
	var out []mapEntry
	for _, e := range exts {
		f := allocationState(e.Kind)
		if n := len(out); n > 0 && out[n-1].Type == f {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, mapEntry{Offset: e.Offset, Length: e.Length, Type: f})
	}
	return out
}

// TestNbdinfoListAndMap: nbdinfo --list shows the volume and its
// snapshots, and nbdinfo --map of each export matches its layer maps.
func TestNbdinfoListAndMap(t *testing.T) {
	t.Parallel()
	needClients(t, "nbdinfo")
	const mib = 1 << 20
	fx := newStrataFixture(t, 64*mib)
	fx.write(t, 0, pattern(1, 8*mib))
	fx.snapshot(t, "s1")
	fx.write(t, 16*mib, pattern(2, 4*mib))
	if err := fx.vol.Zero(4*mib, mib); err != nil {
		t.Fatal(err)
	}
	if err := fx.vol.Trim(mib, mib); err != nil {
		t.Fatal(err)
	}
	fx.snapshot(t, "s2")
	fx.write(t, 32*mib, pattern(3, mib))
	if err := fx.vol.Trim(16*mib, 64<<10); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, fx.exports, Options{})

	var list struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
		} `json:"exports"`
	}
	out := runCmd(t, "nbdinfo", "--list", "--json", nbdURI(ts.sock, ""))
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	var names []string
	for _, e := range list.Exports {
		names = append(names, e.Name)
		if e.Size != 64*mib || e.ReadOnly != strings.Contains(e.Name, "@") || e.Description == "" {
			t.Errorf("export %+v", e)
		}
	}
	if want := []string{"vol", "vol@s1", "vol@s2"}; !slices.Equal(names, want) {
		t.Fatalf("nbdinfo --list: exports %q, want %q\n%s", names, want, out)
	}

	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			var got []mapEntry
			out := runCmd(t, "nbdinfo", "--map", "--json", nbdURI(ts.sock, name))
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
			}
			dev, release, err := fx.exports.Open(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			want := wantMap(t, dev)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("nbdinfo --map %s:\n got %v\nwant %v", name, got, want)
			}
			if len(want) < 2 {
				t.Fatalf("map %v has too few extents to test anything", want)
			}
		})
	}
}

// sameFiles compares two files and reports the first differing offset.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the MiB at %d", a, b, off)
		}
		if ea != nil || eb != nil {
			return
		}
	}
}

// writeRandomFile writes n random bytes with some zero runs (so the copy
// meets holes too).
func writeRandomFile(t *testing.T, path string, n int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off := int64(0); off < n; off += 4 << 20 {
		chunk := pattern(seed+uint64(off), 4<<20)
		if (off>>22)%5 == 3 {
			clear(chunk)
		}
		if _, err := f.Write(chunk[:min(int64(len(chunk)), n-off)]); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNbdcopyRoundTrip copies a random 256 MiB image into a volume and
// back out with nbdcopy (multi-conn, many requests in flight).
func TestNbdcopyRoundTrip(t *testing.T) {
	t.Parallel()
	needClients(t, "nbdcopy")
	const size = 256 << 20
	fx := newStrataFixture(t, size)
	ts := startServer(t, fx.exports, Options{})
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	writeRandomFile(t, src, size, 11)
	runCmd(t, "nbdcopy", "--flush", src, nbdURI(ts.sock, "vol"))
	runCmd(t, "nbdcopy", nbdURI(ts.sock, "vol"), dst)
	sameFiles(t, src, dst)
}

// TestQemuImgSnapshotExport converts a snapshot export (taken before the
// head was overwritten) to a raw file with qemu-img and compares it with
// the snapshot's data, and qemu-img compare agrees.
func TestQemuImgSnapshotExport(t *testing.T) {
	t.Parallel()
	needClients(t, "qemu-img")
	const size = 64 << 20
	fx := newStrataFixture(t, size)
	fx.write(t, 0, pattern(21, 24<<20))
	fx.write(t, 40<<20, pattern(22, 8<<20))
	vw := fx.snapshot(t, "s1")
	fx.write(t, 4<<20, pattern(23, 30<<20)) // the head moves on
	ts := startServer(t, fx.exports, Options{})

	dir := t.TempDir()
	out := filepath.Join(dir, "s1.raw")
	runCmd(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", nbdURI(ts.sock, "vol@s1"), out)
	want := make([]byte, size)
	if _, err := vw.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("qemu-img convert of vol@s1 differs from the snapshot's data")
	}
	res := runCmd(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", nbdURI(ts.sock, "vol@s1"), out)
	if !strings.Contains(string(res), "Images are identical") {
		t.Fatalf("qemu-img compare: %s", res)
	}
	// And the head is not the snapshot.
	if res, err := runCmdErr(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", nbdURI(ts.sock, "vol"), out); err == nil {
		t.Fatalf("qemu-img compare of the head with the snapshot copy says identical: %s", res)
	}
}

// fioArgs is a verified random-write job over [off, off+size) of uri.
func fioArgs(uri, name string, off, size int64, seed int, extra ...string) []string {
	return append([]string{
		"--name=" + name, "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=32",
		fmt.Sprintf("--offset=%d", off), fmt.Sprintf("--size=%d", size),
		"--verify=crc32c", "--verify_fatal=1", fmt.Sprintf("--randseed=%d", seed),
	}, extra...)
}

// TestFioMultiConnVerify runs fio's nbd engine with two jobs (two
// connections) writing then verifying their halves at iodepth 32.
func TestFioMultiConnVerify(t *testing.T) {
	t.Parallel()
	needClients(t, "fio")
	fx := newStrataFixture(t, 128<<20)
	ts := startServer(t, fx.exports, Options{})
	args := fioArgs(nbdURI(ts.sock, "vol"), "multiconn", 0, 64<<20, 1, "--numjobs=2", "--offset_increment=64m", "--group_reporting")
	out := runCmd(t, "fio", args...)
	if !strings.Contains(string(out), "multiconn") {
		t.Fatalf("fio output lacks the job:\n%s", out)
	}
}

// countingVolume signals the first write at or above a threshold offset.
type countingVolume struct {
	blockdev.Volume
	from int64
	once sync.Once
	hit  chan struct{}
}

func (c *countingVolume) WriteAt(ctx context.Context, p []byte, off int64, f blockdev.WriteFlags) (int, error) {
	n, err := c.Volume.WriteAt(ctx, p, off, f)
	if off >= c.from && err == nil {
		c.once.Do(func() { close(c.hit) })
	}
	return n, err
}

// TestFioSnapshotDuringRun: phase 1 writes region A with verify headers;
// phase 2 writes region B, and a snapshot is taken while it runs; phase 3
// overwrites region A with another seed. The snapshot export must still
// verify against phase 1, the head against phase 3.
func TestFioSnapshotDuringRun(t *testing.T) {
	t.Parallel()
	needClients(t, "fio")
	const region = 32 << 20
	store, err := snapshot.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := store.Create(t.Context(), "vol", 2*region)
	if err != nil {
		t.Fatal(err)
	}
	var views []*snapshot.View
	t.Cleanup(func() {
		for _, v := range views {
			_ = v.Close()
		}
		_ = vol.Close()
		_ = store.Close()
	})
	head := &countingVolume{Volume: blockdev.FromSnapshot(vol), from: region, hit: make(chan struct{})}
	exports := NewMapExports()
	if err := exports.Add(head, ""); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, exports, Options{})
	uri := nbdURI(ts.sock, "vol")

	runCmd(t, "fio", fioArgs(uri, "phase1", 0, region, 1)...)
	before := make([]byte, region)
	if _, err := vol.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}

	phase2 := make(chan error, 1)
	go func() {
		out, err := runCmdErr(t, "fio", fioArgs(uri, "phase2", region, region, 2, "--time_based", "--runtime=3s", "--do_verify=0")...)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		phase2 <- err
	}()
	<-head.hit // phase 2 is writing
	if err := vol.Snapshot(t.Context(), "mid"); err != nil {
		t.Fatal(err)
	}
	vw, err := vol.OpenSnapshot(t.Context(), "mid")
	if err != nil {
		t.Fatal(err)
	}
	views = append(views, vw)
	if err := exports.Add(blockdev.FromView(vw), ""); err != nil {
		t.Fatal(err)
	}
	if err := <-phase2; err != nil {
		t.Fatalf("phase 2: %v", err)
	}

	// Phase 3 uses another block size as well as another seed: fio's
	// crc32c headers are self-consistent, so only a different length
	// makes phase 1's verification fail on phase 3's data.
	runCmd(t, "fio", fioArgs(uri, "phase3", 0, region, 3, "--bs=8k")...)

	snapURI := nbdURI(ts.sock, "vol@mid")
	runCmd(t, "fio", fioArgs(snapURI, "phase1", 0, region, 1, "--verify_only=1")...)
	runCmd(t, "fio", fioArgs(uri, "phase3", 0, region, 3, "--bs=8k", "--verify_only=1")...)
	if out, err := runCmdErr(t, "fio", fioArgs(uri, "phase1", 0, region, 1, "--verify_only=1")...); err == nil {
		t.Fatalf("phase 1 verifies against the head after phase 3 overwrote it:\n%s", out)
	}
	// And bit-exact: the snapshot's region A is what phase 1 left.
	got := make([]byte, region)
	if _, err := vw.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before) {
		t.Fatalf("snapshot region A differs from the data written before the snapshot")
	}
}

// nbdshEnv returns the environment nbdsh needs: nbdsh runs "python3 -m
// nbd", and the first python3 on PATH (a pyenv, say) may not see the
// Debian python3-libnbd module that /usr/bin/python3 does.
func nbdshEnv(t *testing.T) []string {
	t.Helper()
	if exec.CommandContext(t.Context(), "python3", "-c", "import nbd").Run() == nil {
		return nil
	}
	if exec.CommandContext(t.Context(), "/usr/bin/python3", "-c", "import nbd").Run() == nil {
		return []string{"PATH=/usr/bin:" + os.Getenv("PATH")}
	}
	msg := "no python3 can import nbd (install python3-libnbd: scripts/deps.sh)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

// TestNbdshSemantics exercises flush, FUA, trim, zero (with NO_HOLE and
// FAST_ZERO), block status and the error values through libnbd's Python
// bindings, then checks the data survives closing and reopening the store.
func TestNbdshSemantics(t *testing.T) {
	t.Parallel()
	needClients(t, "nbdsh")
	env := nbdshEnv(t)
	dir := t.TempDir()
	store, err := snapshot.OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := store.Create(t.Context(), "vol", 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vol.WriteAt(pattern(31, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := vol.Snapshot(t.Context(), "s"); err != nil {
		t.Fatal(err)
	}
	vw, err := vol.OpenSnapshot(t.Context(), "s")
	if err != nil {
		t.Fatal(err)
	}
	exports := NewMapExports()
	for _, d := range []blockdev.Volume{blockdev.FromSnapshot(vol), blockdev.FromView(vw)} {
		if err := exports.Add(d, ""); err != nil {
			t.Fatal(err)
		}
	}
	ts := startServer(t, exports, Options{})

	script := `
import hashlib, nbd
K, M = 4096, 1 << 20
caps = dict(flush=h.can_flush(), fua=h.can_fua(), trim=h.can_trim(), zero=h.can_zero(), fast_zero=h.can_fast_zero(), multi=h.can_multi_conn(), df=h.can_df())
assert all(caps.values()), caps
assert h.can_multi_conn() and h.can_df() and h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert not h.is_read_only()

def status(off, n):
    got = []
    def cb(meta, o, entries, err):
        assert meta == nbd.CONTEXT_BASE_ALLOCATION
        got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(n, off, cb)
    return got

h.pwrite(b"\xab" * (64 * K), 2 * M, nbd.CMD_FLAG_FUA)
h.pwrite(b"\xcd" * (64 * K), 3 * M)
h.flush()
assert h.pread(64 * K, 2 * M) == b"\xab" * (64 * K)
assert status(2 * M, 64 * K) == [(64 * K, 0)], status(2 * M, 64 * K)

h.trim(16 * K, 2 * M + 16 * K, nbd.CMD_FLAG_FUA)
assert h.pread(16 * K, 2 * M + 16 * K) == bytes(16 * K)
assert status(2 * M + 16 * K, 16 * K) == [(16 * K, 3)], status(2 * M + 16 * K, 16 * K)

h.zero(32 * K, 3 * M, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(32 * K, 3 * M) == bytes(32 * K)
assert status(3 * M, 32 * K) == [(32 * K, 2)], status(3 * M, 32 * K)
h.zero(4 * K, 0)   # may punch: over snapshot data it must still read zeros
assert h.pread(4 * K, 0) == bytes(4 * K)
assert status(0, 4 * K) == [(4 * K, 3)], status(0, 4 * K)

h.set_strict_mode(0)  # let the server, not libnbd, refuse out-of-range requests
for op, want in [(lambda: h.pread(K, 16 * M - 512), 22),
                 (lambda: h.pwrite(b"x" * K, 16 * M - 512), 28)]:
    try:
        op()
        raise AssertionError("no error")
    except nbd.Error as e:
        assert e.errnum == want, (e.errnum, e.string)

ro = nbd.NBD()
ro.connect_uri(URI_RO)
assert ro.is_read_only()
assert hashlib.sha256(ro.pread(M, 0)).hexdigest() == SNAP_SHA256
try:
    ro.pwrite(b"x" * K, 0)
    raise AssertionError("write to a snapshot succeeded")
except nbd.Error as e:
    assert e.errnum == 1, (e.errnum, e.string)
ro.shutdown()
h.shutdown()
print("ok")
`
	script = strings.Replace(script, "URI_RO", fmt.Sprintf("%q", nbdURI(ts.sock, "vol@s")), 1)
	script = strings.Replace(script, "SNAP_SHA256", fmt.Sprintf("%q", fmt.Sprintf("%x", sha256.Sum256(pattern(31, 1<<20)))), 1)
	out, err := runCmdEnv(t, env, "nbdsh", "--base-allocation", "-u", nbdURI(ts.sock, "vol"), "-c", script)
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}

	// The writes are on disk: reopen the store and read them back.
	ts.stop(t)
	_ = vw.Close()
	if err := vol.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	store, err = snapshot.OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	vol, err = store.Open(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	// The script's K is 4 KiB: 256 KiB of 0xab at 2 MiB, then 64 KiB of it
	// trimmed at 2 MiB + 64 KiB.
	got := make([]byte, 256<<10)
	if _, err := vol.ReadAt(got, 2<<20); err != nil {
		t.Fatal(err)
	}
	ab := bytes.Repeat([]byte{0xab}, 64<<10)
	want := slices.Concat(ab, make([]byte, 64<<10), ab, ab)
	if !bytes.Equal(got, want) {
		t.Fatalf("after reopening the store, [2M,+256K) is not the FUA write minus the trim")
	}
}
