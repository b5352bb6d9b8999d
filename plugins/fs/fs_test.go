package fs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
	"github.com/strata-block/strata/plugins/targettest"
)

// The test binary doubles as `strata plugin serve fs`.
func TestMain(m *testing.M) {
	targettest.Main(m, map[string]plugins.OpenFunc{fs.Kind: fs.Open})
}

func newTarget(t *testing.T, dir string) *fs.Target {
	t.Helper()
	tg, err := fs.New(dir)
	if err != nil {
		t.Fatalf("New(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

// openPlugin opens the fs target on dir through a plugin process, its
// payloads over the data plane or in the gRPC stream.
func openPlugin(t *testing.T, dir string, dataPlane bool) *plugins.Remote {
	t.Helper()
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t), DisableDataPlane: !dataPlane})
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "fs-test", URL: "file://" + dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if r.UsesDataPlane() != dataPlane {
		t.Fatalf("UsesDataPlane() = %v, want %v", r.UsesDataPlane(), dataPlane)
	}
	return r
}

// payloadPaths names the two ways payloads reach a plugin.
var payloadPaths = map[string]bool{"DataPlane": true, "GRPCPayloads": false}

func TestConformance(t *testing.T) {
	t.Parallel()
	targettest.Run(t, func(t *testing.T) plugins.Target { return newTarget(t, t.TempDir()) })
}

func TestConformancePlugin(t *testing.T) {
	t.Parallel()
	for name, dataPlane := range payloadPaths {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			targettest.Run(t, func(t *testing.T) plugins.Target { return openPlugin(t, t.TempDir(), dataPlane) })
		})
	}
}

func TestCrash(t *testing.T) {
	t.Parallel()
	for name, dataPlane := range payloadPaths {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			targettest.RunCrash(t, func(t *testing.T) (targettest.PluginTarget, plugins.Target) {
				dir := t.TempDir()
				return openPlugin(t, dir, dataPlane), newTarget(t, dir)
			})
		})
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url, want string
		ok        bool
	}{
		{url: "file:///srv/backups", want: "/srv/backups", ok: true},
		{url: "file://localhost/srv/b/", want: "/srv/b", ok: true},
		{url: "file:///srv/../etc", want: "/etc", ok: true},
		{url: "file://host/srv", ok: false},
		{url: "file:relative", ok: false},
		{url: "file://user:pw@/srv", ok: false},
		{url: "file:///srv?x=1", ok: false},
		{url: "file:///srv#frag", ok: false},
		{url: "s3://bucket", ok: false},
		{url: "/srv/backups", ok: false},
		{url: "file:///a%00b", ok: false},
	}
	for _, tt := range tests {
		got, err := fs.ParseURL(tt.url)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseURL(%q) = %q, %v; want %q, ok %v", tt.url, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, plugins.ErrPermanent) {
			t.Errorf("ParseURL(%q): %v is not permanent", tt.url, err)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"file:///srv", "file://localhost/a/b", "file:x", "file:///a?b", "file://h/%2e%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		dir, err := fs.ParseURL(s)
		if err != nil {
			return
		}
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || strings.ContainsRune(dir, 0) {
			t.Fatalf("ParseURL(%q) = %q: not a clean absolute path", s, dir)
		}
	})
}

// A symlink planted in the directory does not lead outside it.
func TestSymlinkEscape(t *testing.T) {
	t.Parallel()
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	tg := newTarget(t, dir)
	ctx := t.Context()
	if err := tg.Put(ctx, "link/new", strings.NewReader("x"), 1); err == nil {
		t.Fatalf("Put through a symlink to outside succeeded")
	}
	if _, _, err := tg.Get(ctx, "link/secret", 0, -1); err == nil {
		t.Fatalf("Get through a symlink to outside succeeded")
	}
	if err := tg.Delete(ctx, []string{"link/secret"}); err == nil {
		if _, serr := os.Stat(filepath.Join(outside, "secret")); serr != nil {
			t.Fatalf("Delete through a symlink removed a file outside: %v", serr)
		}
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 1 {
		t.Fatalf("outside directory now holds %d entries", len(ents))
	}
	for o, err := range tg.List(ctx, "", "") {
		if err != nil {
			break
		}
		if strings.HasPrefix(o.Key, "link/") {
			t.Fatalf("List shows %q from outside", o.Key)
		}
	}
}

// Keys are paths: an object cannot also be a directory of keys.
func TestKeyPrefixConflict(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, t.TempDir())
	ctx := t.Context()
	if err := tg.Put(ctx, "a", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := tg.Put(ctx, "a/b", strings.NewReader("x"), 1); !errors.Is(err, plugins.ErrPermanent) {
		t.Fatalf("Put(a/b) with object a: %v, want a permanent error", err)
	}
	if err := tg.Put(ctx, "c/d", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := tg.Put(ctx, "c", strings.NewReader("x"), 1); !errors.Is(err, plugins.ErrPermanent) {
		t.Fatalf("Put(c) with object c/d: %v, want a permanent error", err)
	}
	if err := tg.PutIfAbsent(ctx, "c", strings.NewReader("x"), 1); err == nil {
		t.Fatalf("PutIfAbsent(c) with object c/d succeeded")
	}
	if err := tg.Delete(ctx, []string{"c"}); err != nil {
		t.Fatalf("Delete of a directory name: %v", err)
	}
	if has, _ := tg.Has(ctx, []string{"c/d", "c"}); !has[0] || has[1] {
		t.Fatalf("Has(c/d, c) = %v", has)
	}
}

// Temporary files of an interrupted writer are never listed or read.
func TestTempFilesInvisible(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tg := newTarget(t, dir)
	if err := tg.Put(t.Context(), "d/k", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "d", ".tmp-0123456789abcdef"), []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "d", "not a key"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for o, err := range tg.List(t.Context(), "", "") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, o.Key)
	}
	if strings.Join(keys, ",") != "d/k" {
		t.Fatalf("List = %v, want [d/k]", keys)
	}
}

// PutFile: the object appears only at a Commit of exactly the Put's size;
// a Commit of a file of another size, or an Abort, stores nothing and
// leaves no temporary file; PutIfAbsent's Commit keeps its condition.
func TestPutFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tg, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	ctx := t.Context()
	start := func(key string, size int64, ifAbsent bool, data string) plugins.FilePut {
		t.Helper()
		p, err := tg.PutFile(ctx, key, size, ifAbsent)
		if err != nil {
			t.Fatalf("PutFile(%q): %v", key, err)
		}
		if _, err := p.File().WriteAt([]byte(data), 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exists := func(key string) bool {
		t.Helper()
		has, err := tg.Has(ctx, []string{key})
		if err != nil {
			t.Fatal(err)
		}
		return has[0]
	}

	if err := start("a/short", 10, false, "12345").Commit(ctx); !errors.Is(err, plugins.ErrPermanent) || !strings.Contains(err.Error(), "holds 5 bytes, not the Put's 10") {
		t.Fatalf("Commit of 5 bytes for 10: %v", err)
	}
	if err := start("a/long", 3, false, "12345").Commit(ctx); err == nil {
		t.Fatal("Commit of 5 bytes for 3 succeeded")
	}
	start("a/aborted", 5, false, "12345").Abort()
	for _, k := range []string{"a/short", "a/long", "a/aborted"} {
		if exists(k) {
			t.Fatalf("%s exists after a failed Put", k)
		}
	}
	p := start("a/ok", 5, false, "12345")
	if err := p.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p.Abort() // after Commit: nothing
	if err := p.Commit(ctx); err == nil {
		t.Fatal("a second Commit succeeded")
	}
	rc, n, err := tg.Get(ctx, "a/ok", 0, -1)
	if err != nil || n != 5 {
		t.Fatalf("Get: %d bytes, %v", n, err)
	}
	rc.Close()
	if err := start("a/ok", 2, true, "xy").Commit(ctx); !errors.Is(err, plugins.ErrAlreadyExists) {
		t.Fatalf("PutIfAbsent Commit onto an existing key: %v", err)
	}
	if _, err := tg.PutFile(ctx, "../x", 1, false); !errors.Is(err, plugins.ErrInvalidKey) {
		t.Fatalf("PutFile of a hostile key: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "ok" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only ok", names)
	}
}

// A target on a local filesystem offers its files to the host; the test's
// temporary directory is on one (ext4 or tmpfs here).
func TestServesFilesLocal(t *testing.T) {
	t.Parallel()
	tg, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if !tg.ServesFiles() {
		t.Fatal("a target in the test's temporary directory does not serve files")
	}
}
