package targettest

import (
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/strata-block/strata/plugins"
)

// Main is a TestMain for packages that test targets through a real plugin
// process: the test binary doubles as the plugin. A Manager whose
// Executable is the test binary (the default: os.Executable) runs
// `<test binary> plugin serve <kind>`; Main serves kind with
// builtins[kind] and exits, and otherwise runs the tests.
func Main(m *testing.M, builtins map[string]plugins.OpenFunc) {
	if len(os.Args) == 4 && os.Args[1] == "plugin" && os.Args[2] == "serve" {
		open, ok := builtins[os.Args[3]]
		if !ok {
			os.Stderr.WriteString("targettest: no built-in plugin " + os.Args[3] + "\n")
			os.Exit(2)
		}
		plugins.Serve(plugins.ServeConfig{Open: open, Logger: plugins.NewPluginLogger(os.Stderr, slog.LevelDebug)})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Logger returns a slog logger that writes through t.Log, for managers
// under test.
// Records after the test ends (a plugin's last words) are dropped.
func Logger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
