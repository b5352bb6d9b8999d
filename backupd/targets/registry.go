package targets

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"

	"github.com/strata-block/strata/internal/atomicfile"
)

// Errors of the registry; the API maps them onto its error codes.
var (
	ErrNotFound = blockdev.ErrNotFound
	ErrExists   = blockdev.ErrExists
	ErrInvalid  = blockdev.ErrInvalidArgument
)

// Target is one registered backup target.
type Target struct {
	Name string `json:"name"`
	// URL selects and configures the plugin (file:///srv/backups,
	// s3://bucket/prefix?endpoint=...). It never carries credentials.
	URL string `json:"url"`
	// Kind is the plugin kind the URL selects (fs, s3, or an external name).
	Kind string `json:"kind"`
	// CredentialsFile is where the operator keeps the credentials
	// (KEY=value lines), read each time the target is opened; empty means
	// the server's environment.
	CredentialsFile string `json:"credentials_file,omitempty"`
	// Default marks the target volumes use unless set otherwise. Exactly
	// one target is the default whenever there is any.
	Default bool      `json:"default"`
	Added   time.Time `json:"added"`
}

// Registry is the persisted set of targets. It is safe for concurrent use.
type Registry struct {
	path string
	mu   sync.Mutex
	ts   []Target
}

type registryFile struct {
	Version int      `json:"version"`
	Targets []Target `json:"targets"`
}

// OpenRegistry loads the registry at path (a missing file is empty).
func OpenRegistry(path string) (*Registry, error) {
	r := &Registry{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("target registry %s: %w", path, err)
	}
	var f registryFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("target registry %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("target registry %s: data after the registry's object: %w", path, ErrInvalid)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("target registry %s: version %d, this build reads 1", path, f.Version)
	}
	defaults := 0
	for i, t := range f.Targets {
		if err := validate(t); err != nil {
			return nil, fmt.Errorf("target registry %s: %w", path, err)
		}
		if slices.ContainsFunc(f.Targets[:i], func(o Target) bool { return o.Name == t.Name }) {
			return nil, fmt.Errorf("target registry %s: target %q is listed twice (edited by hand?): %w", path, t.Name, ErrInvalid)
		}
		if t.Default {
			defaults++
		}
	}
	if len(f.Targets) > 0 && defaults != 1 {
		return nil, fmt.Errorf("target registry %s: %d targets marked default, want exactly one (edited by hand?): %w", path, defaults, ErrInvalid)
	}
	r.ts = f.Targets
	return r, nil
}

func validate(t Target) error {
	if !blockdev.ValidName(t.Name) {
		return fmt.Errorf("target name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", t.Name, blockdev.ErrInvalidName)
	}
	kind, err := plugins.KindOf(t.URL)
	if err != nil {
		return fmt.Errorf("target %q: %v: %w", t.Name, err, ErrInvalid)
	}
	if t.Kind != "" && t.Kind != kind {
		return fmt.Errorf("target %q: kind %q does not match its URL (%s): %w", t.Name, t.Kind, kind, ErrInvalid)
	}
	if t.CredentialsFile != "" && !filepath.IsAbs(t.CredentialsFile) {
		return fmt.Errorf("target %q: credentials file %q: must be an absolute path: %w", t.Name, t.CredentialsFile, ErrInvalid)
	}
	return nil
}

// List returns the targets sorted by name.
func (r *Registry) List() []Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.ts)
	slices.SortFunc(out, func(a, b Target) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Get returns the target called name.
func (r *Registry) Get(name string) (Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.ts, func(t Target) bool { return t.Name == name })
	if i < 0 {
		return Target{}, fmt.Errorf("target %q: %w", name, ErrNotFound)
	}
	return r.ts[i], nil
}

// Default returns the default target.
func (r *Registry) Default() (Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.ts {
		if t.Default {
			return t, nil
		}
	}
	return Target{}, fmt.Errorf("no default target (add one with strata target add NAME URL --default): %w", ErrNotFound)
}

// Add registers t. The first target becomes the default; t.Default moves
// the default to t.
func (r *Registry) Add(t Target) (Target, error) {
	kind, err := plugins.KindOf(t.URL)
	if err != nil {
		return Target{}, fmt.Errorf("target %q: %v: %w", t.Name, err, ErrInvalid)
	}
	t.Kind = kind
	if err := validate(t); err != nil {
		return Target{}, err
	}
	if t.Added.IsZero() {
		t.Added = time.Now().UTC()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.ContainsFunc(r.ts, func(o Target) bool { return o.Name == t.Name }) {
		return Target{}, fmt.Errorf("target %q: %w", t.Name, ErrExists)
	}
	ts := slices.Clone(r.ts)
	if len(ts) == 0 {
		t.Default = true
	}
	if t.Default {
		for i := range ts {
			ts[i].Default = false
		}
	}
	ts = append(ts, t)
	if err := r.saveLocked(ts); err != nil {
		return Target{}, err
	}
	return t, nil
}

// SetDefault makes name the default target (and no other).
func (r *Registry) SetDefault(name string) (Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.ts, func(t Target) bool { return t.Name == name })
	if i < 0 {
		return Target{}, fmt.Errorf("target %q: %w", name, ErrNotFound)
	}
	ts := slices.Clone(r.ts)
	for j := range ts {
		ts[j].Default = j == i
	}
	if err := r.saveLocked(ts); err != nil {
		return Target{}, err
	}
	return ts[i], nil
}

// Remove unregisters name. The default target can be removed only when it
// is the last one (make another the default first).
func (r *Registry) Remove(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.ts, func(t Target) bool { return t.Name == name })
	if i < 0 {
		return fmt.Errorf("target %q: %w", name, ErrNotFound)
	}
	if r.ts[i].Default && len(r.ts) > 1 {
		return fmt.Errorf("target %q is the default; make another the default first (strata target set NAME --default): %w", name, blockdev.ErrInUse)
	}
	return r.saveLocked(slices.Delete(slices.Clone(r.ts), i, i+1))
}

// saveLocked writes ts atomically (temp file, fsync, rename, fsync dir)
// and makes it the registry's list once the file holds it: also when only
// the directory's sync failed (atomicfile.ErrUncertain), since the file
// names the new list from then on and the next start reads it.
func (r *Registry) saveLocked(ts []Target) error {
	b, err := json.MarshalIndent(registryFile{Version: 1, Targets: ts}, "", "  ")
	if err != nil {
		return err
	}
	err = atomicfile.Write(r.path, b)
	if err == nil || errors.Is(err, atomicfile.ErrUncertain) {
		r.ts = ts
	}
	if err != nil {
		return fmt.Errorf("save target registry: %w", err)
	}
	return nil
}
