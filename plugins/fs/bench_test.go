package fs_test

import (
	"log/slog"
	"testing"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
	"github.com/strata-block/strata/plugins/targettest"
)

// BenchmarkTarget compares Put and Get of 4 MiB objects on the fs target
// called in-process and through its plugin process (go-plugin with mTLS;
// the host reads and writes the objects' files through descriptors the
// plugin passes, plugins/doc.go "Objects as local files"). The ratio of
// the two is the plugin overhead recorded in benchmarks/RESULTS.md.
func BenchmarkTarget(b *testing.B) {
	targettest.Bench(b, map[string]func(b *testing.B) plugins.Target{
		"inprocess": func(b *testing.B) plugins.Target {
			tg, err := fs.New(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = tg.Close() })
			return tg
		},
		"plugin": func(b *testing.B) plugins.Target {
			m := plugins.NewManager(plugins.ManagerConfig{Logger: slog.New(slog.DiscardHandler)})
			b.Cleanup(func() { _ = m.Close() })
			r, err := m.Open(b.Context(), plugins.TargetConfig{Name: "bench", URL: "file://" + b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			return r
		},
	})
}
