package targets

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

// RegistryFile is the registry's file name in the data directory.
const RegistryFile = "targets.json"

// Service serves the target routes of the control API and opens targets
// for the backup engine.
type Service struct {
	reg *Registry
	mgr *plugins.Manager
	log *slog.Logger
}

// NewService opens the registry in dataDir. Plugins run as `exe plugin
// serve <kind>` (exe empty: this executable) or strata-target-<kind> in
// pluginDir.
func NewService(dataDir, exe, pluginDir string, log *slog.Logger) (*Service, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg, err := OpenRegistry(filepath.Join(dataDir, RegistryFile))
	if err != nil {
		return nil, err
	}
	mgr := plugins.NewManager(plugins.ManagerConfig{Logger: log.With("component", "plugins"), Executable: exe, PluginDir: pluginDir})
	return &Service{reg: reg, mgr: mgr, log: log}, nil
}

// Registry returns the registry.
func (s *Service) Registry() *Registry { return s.reg }

// Close stops every plugin the service started.
func (s *Service) Close() error { return s.mgr.Close() }

// Open starts the plugin of target name with its credentials, read from
// the credentials file now. The caller closes the target.
func (s *Service) Open(ctx context.Context, name string) (plugins.Target, error) {
	t, err := s.reg.Get(name)
	if err != nil {
		return nil, err
	}
	return s.open(ctx, t)
}

// OpenUnregistered starts the plugin of a target the registry does not
// hold (a system restore from a URL this host does not know). The caller
// closes the target.
func (s *Service) OpenUnregistered(ctx context.Context, t Target) (plugins.Target, error) {
	kind, err := plugins.KindOf(t.URL)
	if err != nil {
		return nil, fmt.Errorf("target %q: %v: %w", t.Name, err, ErrInvalid)
	}
	t.Kind = kind
	if err := validate(t); err != nil {
		return nil, err
	}
	return s.open(ctx, t)
}

func (s *Service) open(ctx context.Context, t Target) (plugins.Target, error) {
	var creds plugins.Credentials
	if t.CredentialsFile != "" {
		c, err := plugins.LoadCredentialsFile(t.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", t.Name, err)
		}
		creds = c
	}
	return s.mgr.Open(ctx, plugins.TargetConfig{Name: t.Name, URL: t.URL, Credentials: creds})
}

// AddRequest is the body of POST /v1/targets.
type AddRequest struct {
	Name            string `json:"name"`
	URL             string `json:"url"`
	CredentialsFile string `json:"credentials_file,omitempty"`
	Default         bool   `json:"default,omitempty"`
}

// TestRequest is the body of POST /v1/targets/{name}/test.
type TestRequest struct {
	Size int64 `json:"size"`
}

// TestResult is what `strata target test` prints.
type TestResult struct {
	Target          string  `json:"target"`
	Kind            string  `json:"kind"`
	Size            int64   `json:"size"`
	PutMillis       float64 `json:"put_ms"`
	GetMillis       float64 `json:"get_ms"`
	HasMillis       float64 `json:"has_ms"`
	DeleteMillis    float64 `json:"delete_ms"`
	PutBytesPerSec  float64 `json:"put_bytes_per_sec"`
	GetBytesPerSec  float64 `json:"get_bytes_per_sec"`
	ConditionalPuts string  `json:"conditional_create"`
}

// maxTestSize bounds the probe object of a test.
const maxTestSize = 256 << 20

// Routes adds the target routes to mux; writeErr and writeJSON are the
// API's own response writers, so errors look the same everywhere.
func (s *Service) Routes(mux *http.ServeMux, writeErr func(http.ResponseWriter, error), writeJSON func(http.ResponseWriter, int, any)) {
	decode := func(r *http.Request, v any) error {
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil && err != io.EOF {
			return fmt.Errorf("request body: %v: %w", err, ErrInvalid)
		}
		return nil
	}
	mux.HandleFunc("GET /v1/targets", func(w http.ResponseWriter, r *http.Request) {
		ts := s.reg.List()
		if ts == nil {
			ts = []Target{}
		}
		writeJSON(w, http.StatusOK, ts)
	})
	mux.HandleFunc("POST /v1/targets", func(w http.ResponseWriter, r *http.Request) {
		var req AddRequest
		if err := decode(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		t, err := s.add(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, t)
	})
	mux.HandleFunc("DELETE /v1/targets/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.reg.Remove(r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		s.log.Info("target removed", "target", r.PathValue("name"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/targets/{name}/default", func(w http.ResponseWriter, r *http.Request) {
		t, err := s.reg.SetDefault(r.PathValue("name"))
		if err != nil {
			writeErr(w, err)
			return
		}
		s.log.Info("default target set", "target", t.Name)
		writeJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("POST /v1/targets/{name}/test", func(w http.ResponseWriter, r *http.Request) {
		var req TestRequest
		if err := decode(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		res, err := s.test(r.Context(), r.PathValue("name"), req.Size)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
}

// add checks that the target works with its credentials before
// registering it, so a typo fails now rather than at the first backup.
func (s *Service) add(ctx context.Context, req AddRequest) (Target, error) {
	t := Target{Name: req.Name, URL: req.URL, CredentialsFile: req.CredentialsFile, Default: req.Default}
	kind, err := plugins.KindOf(t.URL)
	if err != nil {
		return Target{}, fmt.Errorf("target %q: %v: %w", t.Name, err, ErrInvalid)
	}
	t.Kind = kind
	if err := validate(t); err != nil {
		return Target{}, err
	}
	if _, err := s.reg.Get(t.Name); err == nil {
		return Target{}, fmt.Errorf("target %q: %w", t.Name, ErrExists)
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tg, err := s.open(octx, t)
	if err != nil {
		return Target{}, fmt.Errorf("target %q does not answer: %v: %w", t.Name, err, ErrInvalid)
	}
	// A small round trip (put, list, get, delete) proves the target is
	// reachable and writable with these credentials.
	_, err = plugins.RoundTrip(octx, tg, 4096)
	_ = tg.Close()
	if err != nil {
		return Target{}, fmt.Errorf("target %q does not answer: %v: %w", t.Name, err, ErrInvalid)
	}
	t, err = s.reg.Add(t)
	if err != nil {
		return Target{}, err
	}
	s.log.Info("target added", "target", t.Name, "kind", t.Kind, "default", t.Default)
	return t, nil
}

func (s *Service) test(ctx context.Context, name string, size int64) (TestResult, error) {
	if size <= 0 {
		size = 4 << 20
	}
	if size > maxTestSize {
		return TestResult{}, fmt.Errorf("test object of %d bytes: at most %d: %w", size, maxTestSize, blockdev.ErrInvalidArgument)
	}
	tg, err := s.Open(ctx, name)
	if err != nil {
		return TestResult{}, err
	}
	defer tg.Close()
	rt, err := plugins.RoundTrip(ctx, tg, size)
	if err != nil {
		return TestResult{}, fmt.Errorf("target %q: %w", name, err)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return TestResult{
		Target: name, Kind: rt.Info.Kind, Size: size,
		PutMillis: ms(rt.PutLatency), GetMillis: ms(rt.GetLatency), HasMillis: ms(rt.HasLatency), DeleteMillis: ms(rt.DeleteLatency),
		PutBytesPerSec: rt.PutThroughput, GetBytesPerSec: rt.GetThroughput,
		ConditionalPuts: rt.Info.ConditionalCreate.String(),
	}, nil
}
