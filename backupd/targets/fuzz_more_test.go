package targets

// A fuzz target for the target registry file (OpenRegistry).
//
// Run it with:
//
//	go test -run '^$' -fuzz '^FuzzOpenRegistry$' -fuzztime 60s ./backupd/targets/

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// registryBytes is the file saveLocked writes for ts.
func registryBytes(tb testing.TB, ts []Target) []byte {
	tb.Helper()
	r := &Registry{path: filepath.Join(tb.TempDir(), RegistryFile)}
	if err := r.saveLocked(ts); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(r.path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzOpenRegistry checks that a registry file loads only if each target
// validates, that what loads is saved and loaded again unchanged, and
// that it holds the registry's invariants, which Add and Remove keep:
// names are unique (Get, Remove and Add go by name) and exactly one
// target is the default whenever there is any (Target.Default).
func FuzzOpenRegistry(f *testing.F) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(registryBytes(f, []Target{
		{Name: "main", URL: "file:///srv/backups", Kind: "fs", Default: true, Added: t0},
		{Name: "offsite", URL: "s3://bucket/prefix?endpoint=https://s3.example", Kind: "s3", CredentialsFile: "/etc/strata/offsite.env", Added: t0.Add(time.Hour)},
		{Name: "ext", URL: "my-plugin://x", Kind: "my-plugin", Added: t0.In(time.FixedZone("x", 3600))},
	}))
	f.Add(registryBytes(f, nil))
	f.Add([]byte(`{"version":1,"targets":[{"name":"a","url":"file:///x","kind":"","default":true,"added":"0001-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"targets":[{"name":"a","url":"file:///x","kind":"s3","default":true}]}`))
	f.Add([]byte(`{"version":1,"targets":[{"name":"A","url":"file:///x","default":true}]}`))
	f.Add([]byte(`{"version":1,"targets":[{"name":"a","url":"s3://u:p@b","default":true}]}`))
	f.Add([]byte(`{"version":1,"targets":[{"name":"a","url":"file:///x","credentials_file":"rel","default":true}]}`))
	f.Add([]byte(`{"version":1,"targets":[{"name":"a","url":"file:///x","extra":1}]}`))
	f.Add([]byte(`{"version":2,"targets":[]}`))
	f.Add([]byte(`{"version":1,"targets":null} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, RegistryFile)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := OpenRegistry(path)
		if err != nil {
			if r != nil {
				t.Fatalf("error %v with a registry", err)
			}
			if !strings.HasPrefix(err.Error(), "target registry "+path+": ") {
				t.Fatalf("error %q does not name the registry file", err)
			}
			return
		}
		ts := r.List()
		names := map[string]bool{}
		defaults := 0
		for _, tg := range ts {
			if err := validate(tg); err != nil {
				t.Fatalf("loaded target %+v does not validate: %v", tg, err)
			}
			if !blockdev.ValidName(tg.Name) {
				t.Fatalf("loaded target name %q", tg.Name)
			}
			if names[tg.Name] {
				t.Fatalf("loaded two targets named %q", tg.Name)
			}
			names[tg.Name] = true
			if tg.Default {
				defaults++
			}
			if got, err := r.Get(tg.Name); err != nil || !reflect.DeepEqual(got, tg) {
				t.Fatalf("Get(%q) = %+v, %v; List has %+v", tg.Name, got, err, tg)
			}
		}
		if len(ts) > 0 && defaults != 1 {
			t.Fatalf("loaded %d targets of which %d are the default, want exactly one", len(ts), defaults)
		}
		if _, err := r.Default(); (err == nil) != (len(ts) > 0) || err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("Default() of %d targets: %v", len(ts), err)
		}
		// Saved (as the next change saves it) and loaded again: the same.
		r.mu.Lock()
		err = r.saveLocked(r.ts)
		r.mu.Unlock()
		if err != nil {
			t.Fatalf("saving the registry read: %v", err)
		}
		r2, err := OpenRegistry(path)
		if err != nil {
			t.Fatalf("reading the registry saved: %v", err)
		}
		if got := r2.List(); len(got) != len(ts) {
			t.Fatalf("registry %+v saved reads back as %+v", ts, got)
		} else {
			for i := range ts {
				g, w := got[i], ts[i]
				if !g.Added.Equal(w.Added) {
					t.Fatalf("target %q added %v reads back as %v", w.Name, w.Added, g.Added)
				}
				g.Added, w.Added = time.Time{}, time.Time{}
				if g != w {
					t.Fatalf("target %+v saved reads back as %+v", ts[i], got[i])
				}
			}
		}
	})
}
