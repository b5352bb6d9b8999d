package service

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/blockdev/agent"
	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
	"github.com/strata-block/strata/plugins/targettest"
)

// The test binary doubles as `strata plugin serve fs`, the built-in
// target the targets service starts for file:// URLs.
func TestMain(m *testing.M) {
	targettest.Main(m, map[string]plugins.OpenFunc{fs.Kind: fs.Open})
}

// env is an agent with the target and backup services, wired as the
// server binary wires them, running in this process with two fs targets:
// "main" (the default) and "extra".
type env struct {
	a   *agent.Agent
	c   *agent.Client
	svc *Service
	ts  *targets.Service
	// dirs holds each target's directory.
	dirs map[string]string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e, stop := startEnv(t, t.TempDir(), nil)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	})
	return e
}

// envOpt changes how startEnv sets an env up: the service's Config, or
// extensions registered before the service (their Routes run before its
// own).
type envOpt func(a *agent.Agent, cfg *Config, before *[]agent.Extension)

// startEnv starts an env on data directory dir until stop. dirs are the
// targets' directories of an earlier env on dir (nil: a new dir, whose
// targets are made and registered).
func startEnv(t *testing.T, dir string, dirs map[string]string, opts ...envOpt) (e *env, stop func() error) {
	t.Helper()
	log := targettest.Logger(t)
	ts, err := targets.NewService(dir, "", "", log)
	if err != nil {
		t.Fatal(err)
	}
	e = &env{ts: ts, dirs: dirs}
	if dirs == nil {
		e.dirs = map[string]string{}
		for _, name := range []string{"main", "extra"} {
			e.dirs[name] = filepath.Join(t.TempDir(), name)
			if _, err := ts.Registry().Add(targets.Target{Name: name, URL: "file://" + e.dirs[name]}); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, err := agent.New(t.Context(), agent.Config{DataDir: dir, FUSE: "off"}, "test", log, ts)
	if err != nil {
		t.Fatal(err)
	}
	e.a = a
	cfg := Config{Manager: a.Manager(), Targets: ts, VolumeTarget: a.VolumeTarget, Exclusive: a.Exclusive, DataDir: dir, Logger: log}
	var before []agent.Extension
	for _, o := range opts {
		o(a, &cfg, &before)
	}
	e.svc = New(cfg)
	a.SetTargetCheck(e.svc.CheckTarget)
	for _, x := range before {
		a.Extend(x)
	}
	a.Extend(e.svc)

	stop, err = a.Start(context.WithoutCancel(t.Context()))
	if err != nil {
		t.Fatalf("agent.Start: %v", err)
	}
	e.c = agent.NewClient(agent.APISocket(dir))
	return e, stop
}

// write writes p at off on volume vol's head and flushes.
func (e *env) write(t *testing.T, vol string, p []byte, off int64) {
	t.Helper()
	dev, release, err := e.a.Manager().Open(t.Context(), vol)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := dev.WriteAt(t.Context(), p, off, 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// backup runs a backup and fails the test on error.
func (e *env) backup(t *testing.T, req CreateRequest) *Backup {
	t.Helper()
	b, err := CreateBackup(t.Context(), e.c, req, nil)
	if err != nil {
		t.Fatalf("backup %+v: %v", req, err)
	}
	return b
}
