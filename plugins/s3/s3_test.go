package s3_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/s3"
	"github.com/strata-block/strata/plugins/targettest"
)

// The test binary doubles as `strata plugin serve s3`.
func TestMain(m *testing.M) {
	targettest.Main(m, map[string]plugins.OpenFunc{s3.Kind: s3.Open})
}

var testCreds = plugins.NewCredentials(map[string]string{s3.EnvAccessKey: testAccess, s3.EnvSecretKey: testSecret})

func openDirect(t *testing.T, url string) plugins.Target {
	t.Helper()
	tg, err := s3.Open(t.Context(), url, testCreds)
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

func openPlugin(t *testing.T, url string) *plugins.Remote {
	t.Helper()
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t)})
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "s3-test", URL: url, Credentials: testCreds})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r
}

func TestConformance(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	// A small part size so 1 MiB + 1 is one PutObject and 64 MiB a
	// multipart upload of 13 parts.
	targettest.Run(t, func(t *testing.T) plugins.Target { return openDirect(t, g.url("&part_size=5242880")) })
}

func TestConformancePlugin(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	targettest.Run(t, func(t *testing.T) plugins.Target { return openPlugin(t, g.url("")) })
}

func TestCrash(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	targettest.RunCrash(t, func(t *testing.T) (targettest.PluginTarget, plugins.Target) {
		u := g.url("&part_size=8388608")
		return openPlugin(t, u), openDirect(t, u)
	})
}

// The conditional-write probe finds versitygw's If-None-Match support.
func TestConditionalModes(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tests := []struct {
		extra string
		want  plugins.ConditionalCreate
	}{
		{extra: "", want: plugins.ConditionalCreateAtomic},
		{extra: "&conditional=native", want: plugins.ConditionalCreateAtomic},
		{extra: "&conditional=none", want: plugins.ConditionalCreateNone},
	}
	for _, tt := range tests {
		tg := openDirect(t, g.url(tt.extra))
		info, err := tg.Info(t.Context())
		if err != nil {
			t.Fatalf("Info(%q): %v", tt.extra, err)
		}
		if info.ConditionalCreate != tt.want {
			t.Fatalf("Info(%q).ConditionalCreate = %v, want %v", tt.extra, info.ConditionalCreate, tt.want)
		}
		if tt.want == plugins.ConditionalCreateNone {
			err := tg.PutIfAbsent(t.Context(), "k", strings.NewReader("x"), 1)
			if !errors.Is(err, plugins.ErrUnsupported) {
				t.Fatalf("PutIfAbsent with conditional=none: %v, want unsupported", err)
			}
		}
		// The probe object never shows.
		for o, err := range tg.List(t.Context(), "", "") {
			t.Fatalf("List after the probe: %v, %v", o, err)
		}
	}
}

// Bad credentials are a permanent error naming no secret.
func TestWrongCredentials(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	creds := plugins.NewCredentials(map[string]string{s3.EnvAccessKey: testAccess, s3.EnvSecretKey: "WRONG-SECRET-VALUE"})
	tg, err := s3.Open(t.Context(), g.url(""), creds)
	if err != nil {
		t.Fatal(err)
	}
	err = tg.Put(t.Context(), "k", strings.NewReader("x"), 1)
	if err == nil || plugins.Classify(err) != plugins.ClassPermanent {
		t.Fatalf("Put with a wrong secret: %v (%v), want a permanent error", err, plugins.Classify(err))
	}
	if strings.Contains(fmt.Sprint(err), "WRONG-SECRET-VALUE") {
		t.Fatalf("the error shows the secret: %v", err)
	}
}
