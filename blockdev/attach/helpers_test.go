package attach

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/fuse"
	"github.com/strata-block/strata/snapshot"
)

func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) != "" {
		os.Exit(serveMain())
	}
	os.Exit(m.Run())
}

// requireRoot skips unless this process can mount FUSE and attach loop
// devices (root, /dev/fuse, /dev/loop-control) and has the tools named.
// Under CI=true a missing prerequisite fails instead.
func requireRoot(t testing.TB, tools ...string) {
	t.Helper()
	reason := ""
	switch {
	case os.Geteuid() != 0:
		reason = "needs root to mount and attach loop devices"
	default:
		for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
			if _, err := os.Stat(p); err != nil {
				reason = "needs " + p + ": " + err.Error()
			}
		}
		for _, tool := range tools {
			if _, err := exec.LookPath(tool); err != nil {
				reason = "needs " + tool + " (scripts/deps.sh installs it): " + err.Error()
			}
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but this test %s", reason)
	}
	t.Skip(reason)
}

// rig is a store, one volume in a FUSE mount, cleaned up in reverse
// order of creation even when the test fails.
type rig struct {
	t     *testing.T
	store *snapshot.Store
	vol   *snapshot.Volume
	fs    *fuse.FS
}

func newRig(t *testing.T, name string, size int64) *rig {
	t.Helper()
	requireRoot(t)
	ctx := t.Context()
	s, err := snapshot.OpenStore(filepath.Join(t.TempDir(), "store"), nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	v, err := s.Create(ctx, name, size)
	if err != nil {
		t.Fatalf("create volume: %v", err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("close volume: %v", err)
		}
	})
	mnt := mkdir(t, "fuse")
	f, err := fuse.Mount(ctx, mnt, &fuse.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("fuse mount: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // files a failed test left open: abort at once
		if err := f.Close(ctx); err != nil {
			t.Errorf("fuse close: %v", err)
		}
	})
	if err := f.Add(blockdev.FromSnapshot(v)); err != nil {
		t.Fatalf("fuse add: %v", err)
	}
	return &rig{t: t, store: s, vol: v, fs: f}
}

// addSnapshot opens snapshot snap of the rig's volume and adds its file.
func (r *rig) addSnapshot(snap string) string {
	r.t.Helper()
	vw, err := r.vol.OpenSnapshot(r.t.Context(), snap)
	if err != nil {
		r.t.Fatalf("open snapshot: %v", err)
	}
	r.t.Cleanup(func() {
		if err := vw.Close(); err != nil {
			r.t.Errorf("close snapshot: %v", err)
		}
	})
	if err := r.fs.Add(blockdev.FromView(vw)); err != nil {
		r.t.Fatalf("fuse add: %v", err)
	}
	// Removed before the mount closes, as the agent would, so that the
	// view can close after the mount.
	return r.fs.Path(vw.Name())
}

// attachLoop attaches file and detaches it at cleanup.
func attachLoop(t *testing.T, file string, opts *LoopOptions) *Loop {
	t.Helper()
	if opts == nil {
		opts = &LoopOptions{}
	}
	opts.Logger = testLogger(t)
	l, err := AttachLoop(t.Context(), file, opts)
	if err != nil {
		t.Fatalf("attach loop: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Detach(context.Background()); err != nil {
			t.Errorf("detach %s: %v", l.Path, err)
		}
	})
	return l
}

// mountFS mounts dev on a fresh directory; cleanup unmounts it.
func mountFS(t *testing.T, dev, fstype string, opts *MountOptions) string {
	t.Helper()
	dir := mkdir(t, "mnt")
	if err := Mount(t.Context(), dev, dir, fstype, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountFS(t, dir) })
	return dir
}

// unmountFS unmounts dir unless it is already unmounted.
func unmountFS(t *testing.T, dir string) {
	t.Helper()
	if err := Unmount(context.Background(), dir); err != nil && !isNotMounted(err) {
		t.Errorf("unmount: %v", err)
	}
}

func mkdir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// fileSums writes files with pseudo-random content under dir and returns
// their SHA-256 sums by name.
func writeFiles(t *testing.T, dir, prefix string, n int, size int) map[string]string {
	t.Helper()
	out := make(map[string]string, n)
	for i := range n {
		b := pattern(uint64(i+1)*0x9e3779b97f4a7c15^uint64(len(prefix)), size)
		name := prefix + "-" + string(rune('a'+i))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[name] = hex.EncodeToString(sum[:])
	}
	return out
}

// checkFiles checks that every file of sums exists under dir with its sum.
func checkFiles(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for name, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: sha256 %s, want %s", name, got, want)
		}
	}
}

// pattern returns n deterministic pseudo-random bytes (xorshift).
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	x := seed | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// testLogger logs through t.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
