package fs

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
)

// syncRecorder replaces a target's fsync, recording the names it is
// called for (temporary files left out) and failing for those in fail.
type syncRecorder struct {
	mu    sync.Mutex
	names []string
	fail  map[string]error
}

func record(t *testing.T, tg *Target) *syncRecorder {
	t.Helper()
	r := &syncRecorder{}
	tg.fsync = func(name string, f *os.File) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !isTempName(path.Base(name)) {
			r.names = append(r.names, name)
		}
		if err := r.fail[name]; err != nil {
			return err
		}
		return f.Sync()
	}
	return r
}

// take returns the names recorded since the last take.
func (r *syncRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.names
	r.names = nil
	return n
}

// openTest opens a target on dir without New's sweep, closed with the test.
func openTest(t *testing.T, dir string) *Target {
	t.Helper()
	tg, err := open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

func mkdirAll(t *testing.T, dir string, rel ...string) {
	t.Helper()
	for _, r := range rel {
		if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(r)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// Every directory of a key is fsynced into its parent before a Put
// returns, whether the Put created it or found it (another Put's, or that
// of a process that died before its fsync), and once per process: later
// Puts below it fsync only the key's own directory.
func TestMkdirsSyncsFoundDirectories(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		pre  []string   // directories there before the target opens
		puts []string   // keys Put in turn
		want [][]string // directories fsynced by each Put
	}{
		{
			name: "created",
			puts: []string{"packs/ab/k"},
			want: [][]string{{".", "packs", "packs/ab"}},
		},
		{
			name: "found",
			pre:  []string{"packs/ab"},
			puts: []string{"packs/ab/k"},
			want: [][]string{{".", "packs", "packs/ab"}},
		},
		{
			name: "partly found",
			pre:  []string{"packs"},
			puts: []string{"packs/ab/k"},
			want: [][]string{{".", "packs", "packs/ab"}},
		},
		{
			name: "once per process",
			pre:  []string{"packs/ab"},
			puts: []string{"packs/ab/k1", "packs/ab/k2", "packs/cd/k3"},
			want: [][]string{{".", "packs", "packs/ab"}, {"packs/ab"}, {"packs", "packs/cd"}},
		},
		{
			name: "at the root",
			puts: []string{"k"},
			want: [][]string{{"."}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			mkdirAll(t, dir, tt.pre...)
			tg := openTest(t, dir)
			rec := record(t, tg)
			for i, k := range tt.puts {
				if err := tg.Put(t.Context(), k, strings.NewReader("x"), 1); err != nil {
					t.Fatalf("Put(%q): %v", k, err)
				}
				if got := rec.take(); !slices.Equal(got, tt.want[i]) {
					t.Fatalf("Put(%q) fsynced %q, want %q", k, got, tt.want[i])
				}
			}
		})
	}
}

// A PutIfAbsent that finds its key taken makes the object there durable —
// its file and its directory entry — before it reports ErrAlreadyExists:
// the object may be one an earlier attempt of the same Put linked before
// its process died, which the host's retry then takes for its own. If
// that fsync fails, so does the PutIfAbsent; a directory under the key is
// a permanent conflict.
func TestPutIfAbsentExistingMadeDurable(t *testing.T) {
	t.Parallel()
	injected := errors.New("injected fsync failure")
	tests := []struct {
		name  string
		files []string // objects there before the target opens
		dirs  []string
		key   string
		fail  map[string]error
		class error
		want  []string // fsynced, after those of mkdirs
	}{
		{name: "left by a dead attempt", files: []string{"a/k"}, key: "a/k", class: plugins.ErrAlreadyExists, want: []string{".", "a/k", "a"}},
		{name: "at the root", files: []string{"k"}, key: "k", class: plugins.ErrAlreadyExists, want: []string{"k", "."}},
		{name: "file fsync fails", files: []string{"a/k"}, key: "a/k", fail: map[string]error{"a/k": injected}, class: injected, want: []string{".", "a/k"}},
		{name: "directory fsync fails", files: []string{"a/k"}, key: "a/k", fail: map[string]error{"a": injected}, class: injected, want: []string{".", "a/k", "a"}},
		{name: "directory under the key", dirs: []string{"c/d"}, key: "c", class: plugins.ErrPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			mkdirAll(t, dir, tt.dirs...)
			for _, f := range tt.files {
				mkdirAll(t, dir, path.Dir(f))
				if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(f)), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			tg := openTest(t, dir)
			rec := record(t, tg)
			rec.fail = tt.fail
			err := tg.PutIfAbsent(t.Context(), tt.key, strings.NewReader("x"), 1)
			if !errors.Is(err, tt.class) {
				t.Fatalf("PutIfAbsent(%q): %v, want %v", tt.key, err, tt.class)
			}
			if tt.class != plugins.ErrAlreadyExists && errors.Is(err, plugins.ErrAlreadyExists) {
				t.Fatalf("PutIfAbsent(%q): %v reports the object there", tt.key, err)
			}
			if got := rec.take(); !slices.Equal(got, tt.want) {
				t.Fatalf("PutIfAbsent(%q) fsynced %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

// New removes the temporary files untouched for staleTempAge, in every
// directory of keys, and nothing else: not a recent one (a live Put's),
// not a file named otherwise, not what hidden directories hold.
func TestSweepStaleTemps(t *testing.T) {
	t.Parallel()
	old := time.Now().Add(-staleTempAge - time.Hour)
	recent := time.Now().Add(-staleTempAge + time.Hour)
	tests := []struct {
		name  string
		mtime time.Time
		kept  bool
	}{
		{name: "d/.tmp-0123456789abcdef", mtime: old},
		{name: ".tmp-00000000000000ff", mtime: old},
		{name: "d/e/f/.tmp-fedcba9876543210", mtime: old},
		{name: "d/.tmp-1111111111111111", mtime: recent, kept: true},
		{name: "d/.tmp-short", mtime: old, kept: true},
		{name: "d/.tmp-0123456789abcdeg", mtime: old, kept: true},
		{name: "d/k", mtime: old, kept: true},
		{name: ".hidden/.tmp-2222222222222222", mtime: old, kept: true},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		p := filepath.Join(dir, filepath.FromSlash(tt.name))
		mkdirAll(t, dir, path.Dir(tt.name))
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, tt.mtime, tt.mtime); err != nil {
			t.Fatal(err)
		}
	}
	tg, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	<-tg.swept // the test's deadline bounds it
	for _, tt := range tests {
		_, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(tt.name)))
		switch {
		case tt.kept && err != nil:
			t.Errorf("%s: %v, want it kept", tt.name, err)
		case !tt.kept && !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s: %v, want it removed", tt.name, err)
		}
	}

	// Within sweepEvery of that sweep, New does not walk the tree again
	// (it did at every plugin start); after it, it does.
	stale := filepath.Join(dir, "d", ".tmp-3333333333333333")
	if err := os.WriteFile(stale, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	sweep := func() {
		t.Helper()
		tg, err := New(dir)
		if err != nil {
			t.Fatal(err)
		}
		<-tg.swept
		if err := tg.Close(); err != nil {
			t.Fatal(err)
		}
	}
	sweep()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatalf("swept again within %v of the last sweep: %v", sweepEvery, err)
	}
	marked := time.Now().Add(-sweepEvery - time.Minute)
	if err := os.Chtimes(filepath.Join(dir, sweptMarker), marked, marked); err != nil {
		t.Fatal(err)
	}
	sweep()
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("not swept %v after the last sweep: %v", sweepEvery, err)
	}
}
