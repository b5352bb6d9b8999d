package targets

import (
	"errors"
	"path/filepath"
	"testing"
)

// TestSetDefault: the default moves to an existing target, durably, and
// exactly one target stays the default; an unknown name changes nothing.
func TestSetDefault(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "targets.json")
	r, err := OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := r.Add(Target{Name: n, URL: "file:///srv/" + n}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.SetDefault("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetDefault(nope) = %v, want not found", err)
	}
	if tg, err := r.SetDefault("b"); err != nil || tg.Name != "b" || !tg.Default {
		t.Fatalf("SetDefault(b) = %+v, %v", tg, err)
	}
	reopened, err := OpenRegistry(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, reg := range []*Registry{r, reopened} {
		def, err := reg.Default()
		if err != nil || def.Name != "b" {
			t.Errorf("default %+v, %v; want b", def, err)
		}
		if a, _ := reg.Get("a"); a.Default {
			t.Errorf("a is still marked default")
		}
	}
}
