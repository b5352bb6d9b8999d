package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
)

// testAgent is an agent running in this process on a temporary data
// directory, without FUSE.
type testAgent struct {
	*Agent
	c *Client
}

// startAgent runs an agent on dataDir until the test ends. setup, if set,
// runs before Run (SetTargetCheck, Extend).
func startAgent(t *testing.T, dataDir string, setup func(*Agent)) *testAgent {
	t.Helper()
	a, err := New(t.Context(), Config{DataDir: dataDir, FUSE: "off"}, "test", nil)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	if setup != nil {
		setup(a)
	}
	stop, err := a.Start(context.WithoutCancel(t.Context()))
	if err != nil {
		t.Fatalf("agent.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	})
	return &testAgent{Agent: a, c: NewClient(APISocket(a.cfg.DataDir))}
}

// knownTargets is a target check that knows the given names.
func knownTargets(names ...string) func(context.Context, string) error {
	return func(_ context.Context, name string) error {
		if !slices.Contains(names, name) {
			return fmt.Errorf("target %q: %w", name, blockdev.ErrNotFound)
		}
		return nil
	}
}

const mib = 1 << 20

func TestVolumeTarget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ta := startAgent(t, dir, func(a *Agent) { a.SetTargetCheck(knownTargets("offsite", "local")) })
	ctx, c := t.Context(), ta.c

	for _, tc := range []struct {
		name   string
		req    CreateVolumeRequest
		target string
		errIs  error
		errHas string
	}{
		{name: "default", req: CreateVolumeRequest{Name: "vol-a", Size: mib}},
		{name: "named", req: CreateVolumeRequest{Name: "vol-b", Size: mib, Target: "offsite"}, target: "offsite"},
		{name: "unknown", req: CreateVolumeRequest{Name: "vol-c", Size: mib, Target: "nowhere"}, errIs: blockdev.ErrNotFound, errHas: `target "nowhere"`},
		{name: "invalid", req: CreateVolumeRequest{Name: "vol-d", Size: mib, Target: "Bad/Name"}, errIs: blockdev.ErrInvalidName, errHas: `"Bad/Name"`},
	} {
		vs, err := c.CreateVolume(ctx, tc.req)
		if tc.errIs != nil {
			if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("%s: CreateVolume: %v, want %v naming %s", tc.name, err, tc.errIs, tc.errHas)
			}
			if _, err := c.Volume(ctx, tc.req.Name); !errors.Is(err, blockdev.ErrNotFound) {
				t.Errorf("%s: a refused create left volume %s: %v", tc.name, tc.req.Name, err)
			}
			continue
		}
		if err != nil || vs.Target != tc.target || ta.VolumeTarget(tc.req.Name) != tc.target {
			t.Errorf("%s: CreateVolume = target %q, %v; VolumeTarget %q; want %q", tc.name, vs.Target, err, ta.VolumeTarget(tc.req.Name), tc.target)
		}
	}

	for _, tc := range []struct {
		name   string
		volume string
		target string
		want   string
		errIs  error
		errHas string
	}{
		{name: "set", volume: "vol-a", target: "local", want: "local"},
		{name: "change", volume: "vol-a", target: "offsite", want: "offsite"},
		{name: "unknown target keeps the setting", volume: "vol-a", target: "nowhere", want: "offsite", errIs: blockdev.ErrNotFound, errHas: `"nowhere"`},
		{name: "reset", volume: "vol-a", target: "", want: ""},
		{name: "unknown volume", volume: "vol-z", target: "local", errIs: blockdev.ErrNotFound, errHas: `"vol-z"`},
	} {
		vs, err := c.SetVolumeTarget(ctx, tc.volume, tc.target)
		if tc.errIs != nil {
			if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("%s: SetVolumeTarget: %v, want %v naming %s", tc.name, err, tc.errIs, tc.errHas)
			}
		} else if err != nil || vs.Target != tc.want {
			t.Errorf("%s: SetVolumeTarget = %q, %v; want %q", tc.name, vs.Target, err, tc.want)
		}
		if got := ta.VolumeTarget(tc.volume); got != tc.want {
			t.Errorf("%s: VolumeTarget(%s) = %q, want %q", tc.name, tc.volume, got, tc.want)
		}
	}

	// PATCH without the field changes nothing.
	var vs VolumeStatus
	if err := c.Do(ctx, "PATCH", "/v1/volumes/vol-b", map[string]any{}, &vs); err != nil || vs.Target != "offsite" {
		t.Errorf("empty PATCH = %q, %v; want offsite unchanged", vs.Target, err)
	}
	if err := c.Do(ctx, "PATCH", "/v1/volumes/vol-b", map[string]any{"size": 1}, nil); !errors.Is(err, blockdev.ErrInvalidArgument) {
		t.Errorf("PATCH of an unknown field: %v, want invalid", err)
	}

	// A clone starts with the default target.
	if _, err := c.CreateSnapshot(ctx, "vol-b", "s1"); err != nil {
		t.Fatal(err)
	}
	if vs, err := c.CloneVolume(ctx, "vol-b", "s1", "vol-clone"); err != nil || vs.Target != "" {
		t.Errorf("clone of vol-b: target %q, %v; want the default", vs.Target, err)
	}

	// Delete forgets the setting: a new volume of the same name has the default.
	if err := c.DeleteVolume(ctx, "vol-b"); err != nil {
		t.Fatal(err)
	}
	if vs, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "vol-b", Size: mib}); err != nil || vs.Target != "" {
		t.Errorf("vol-b created again: target %q, %v; want the default", vs.Target, err)
	}
	if _, err := c.SetVolumeTarget(ctx, "vol-clone", "local"); err != nil {
		t.Fatal(err)
	}
	vols, err := c.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range vols {
		got[v.Name] = v.Target
	}
	if want := map[string]string{"vol-a": "", "vol-b": "", "vol-clone": "local"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Volumes targets = %v, want %v", got, want)
	}
}

// The settings survive a restart, and a restarted agent forgets those of
// volumes that are gone.
func TestVolumeTargetPersists(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	func() {
		a, err := New(t.Context(), Config{DataDir: dir, FUSE: "off"}, "test", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.mgr.Close()
		a.SetTargetCheck(knownTargets("offsite"))
		for _, name := range []string{"keep", "gone"} {
			if _, err := a.createVolume(t.Context(), CreateVolumeRequest{Name: name, Size: mib, Target: "offsite"}); err != nil {
				t.Fatal(err)
			}
		}
		// Deleted behind the agent's back (as if by an older build).
		if err := a.mgr.Delete(t.Context(), "gone"); err != nil {
			t.Fatal(err)
		}
	}()
	ta := startAgent(t, dir, nil)
	if got := ta.VolumeTarget("keep"); got != "offsite" {
		t.Errorf("after restart: VolumeTarget(keep) = %q, want offsite", got)
	}
	if _, ok := ta.state.st.Volumes["gone"]; ok {
		t.Errorf("after restart: the settings of deleted volume gone are still recorded")
	}
}

func TestStateVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string
		attach  string
		target  string
		errHas  string
	}{
		{name: "v1", content: `{"version":1,"attachments":{"vol-a":{"device":"/dev/loop7","kind":"loop"}}}`, attach: "/dev/loop7"},
		{name: "v2", content: `{"version":2,"attachments":{},"volumes":{"vol-a":{"target":"offsite"}}}`, target: "offsite"},
		{name: "v2 null entries", content: `{"version":2,"attachments":{"x":null},"volumes":{"vol-a":null}}`},
		{name: "newer", content: `{"version":3}`, errHas: "version 3, this build reads 1 to 2"},
		{name: "zero", content: `{}`, errHas: "version 0"},
		{name: "garbage", content: `{"version":`, errHas: "move it away"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), stateName)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := openState(path)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("openState: %v, want an error mentioning %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("openState: %v", err)
			}
			at, _ := s.get("vol-a")
			if at.Device != tc.attach || s.settings("vol-a").Target != tc.target {
				t.Errorf("read attachment %q target %q, want %q %q", at.Device, s.settings("vol-a").Target, tc.attach, tc.target)
			}
			// The next save writes version 2 with both parts.
			if err := s.setSettings("vol-b", volumeSettings{Target: "t"}); err != nil {
				t.Fatal(err)
			}
			s2, err := openState(path)
			if err != nil {
				t.Fatal(err)
			}
			at2, _ := s2.get("vol-a")
			if s2.st.Version != stateVersion || at2 != at || s2.settings("vol-b").Target != "t" || s2.settings("vol-a").Target != tc.target {
				t.Errorf("rewritten state: version %d, attachment %+v, settings %+v", s2.st.Version, at2, s2.st.Volumes)
			}
		})
	}
}

// A state change that cannot be saved is not made.
func TestStateSaveFailureChangesNothing(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := openState(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setSettings("vol-a", volumeSettings{Target: "t1"}); err != nil {
		t.Fatal(err)
	}
	s.path = filepath.Join(dir, "missing", stateName) // no such directory: saves fail
	if err := s.setSettings("vol-a", volumeSettings{Target: "t2"}); err == nil {
		t.Fatal("save into a missing directory succeeded")
	}
	if got := s.settings("vol-a").Target; got != "t1" {
		t.Errorf("after a failed save: target %q, want t1 unchanged", got)
	}
}

// closeRecorder is an Extension that records when it is closed.
type closeRecorder struct {
	name   string
	closed *[]string
}

func (closeRecorder) Routes(*http.ServeMux, func(http.ResponseWriter, error), func(http.ResponseWriter, int, any)) {
}
func (r closeRecorder) Close() error { *r.closed = append(*r.closed, r.name); return nil }

// TestExtensionsClosedInReverse: the last extension registered closes
// first. The server registers the targets service before the backup
// service, whose jobs call the target plugins until they stop; closed in
// registration order, the plugins were killed under the jobs' last calls.
func TestExtensionsClosedInReverse(t *testing.T) {
	t.Parallel()
	var closed []string
	a, err := New(t.Context(), Config{DataDir: t.TempDir(), FUSE: "off"}, "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"targets", "backups", "coordinator"} {
		a.Extend(closeRecorder{name: n, closed: &closed})
	}
	stop, err := a.Start(context.WithoutCancel(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"coordinator", "backups", "targets"}; !slices.Equal(closed, want) {
		t.Errorf("closed %v, want %v", closed, want)
	}
}
