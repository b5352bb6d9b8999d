package backupd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/plugins"
)

// TestListLoadFailure: a manifest whose Get fails for another reason than
// damage (a target that does not answer, a spurious 404 while Has finds
// it) fails List, Latest and Prune with an error naming it, rather than
// leaving it out: callers acting on a partial list would release, delete
// or back up wrongly. A manifest that does not decode is left out and
// reported by ListManifests and Prune.
func TestListLoadFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		fault   error // Get of the newest manifest fails with it
		corrupt bool  // the newest manifest is rewritten as garbage
		wantErr error // nil: List succeeds without it and reports it skipped
	}{
		{name: "transient", fault: fmt.Errorf("connection reset: %w", plugins.ErrTransient), wantErr: plugins.ErrTransient},
		{name: "plugin-died", fault: fmt.Errorf("plugin exited: %w", plugins.ErrClosed), wantErr: plugins.ErrPermanent},
		{name: "spurious-404", fault: fmt.Errorf("404 from a gateway: %w", plugins.ErrNotFound), wantErr: plugins.ErrTransient},
		{name: "corrupt", corrupt: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			dir := t.TempDir()
			ft := &faultTarget{Target: NewFSTarget(t, dir)}
			r := Open(ft, &Options{Logger: testLogger(t)})
			keys := hourlyBackups(t, r, 3, 131)
			newest := keys[2]
			if tc.corrupt {
				if err := os.WriteFile(filepath.Join(dir, newest), []byte(`{"format":`), 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				ft.failGet(keyIs(newest, tc.fault))
			}

			infos, listErr := r.List(ctx, "vol-a")
			_, latestErr := r.Latest(ctx, "vol-a")
			pr, pruneErr := r.Prune(ctx, PruneOptions{KeepLast: 1})
			if tc.wantErr == nil {
				if listErr != nil || len(infos) != 2 {
					t.Fatalf("List = %d backups, %v; want the 2 that load", len(infos), listErr)
				}
				l, err := r.ListManifests(ctx, "vol-a")
				if err != nil || len(l.Skipped) != 1 || l.Skipped[0].Key != newest {
					t.Fatalf("ListManifests = %+v, %v; want %s skipped", l, err, newest)
				}
				if latestErr != nil || pruneErr != nil {
					t.Fatalf("Latest = %v, Prune = %v", latestErr, pruneErr)
				}
				if len(pr.Skipped) != 1 || pr.Skipped[0].Key != newest {
					t.Errorf("Prune skipped %+v, want %s", pr.Skipped, newest)
				}
				return
			}
			for what, err := range map[string]error{"List": listErr, "Latest": latestErr, "Prune": pruneErr} {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), newest) {
					t.Errorf("%s = %v, want %v naming %s", what, err, tc.wantErr, newest)
				}
				if errors.Is(err, plugins.ErrNotFound) {
					t.Errorf("%s = %v: wraps ErrNotFound (\"no backup\" to Latest's callers)", what, err)
				}
			}
			if pr != nil && len(pr.Deleted) != 0 {
				t.Errorf("Prune deleted %v on a partial list", pr.Deleted)
			}
			ft.failGet(nil)
			if left := SortedKeys(t, ft, prefixBackups); len(left) != 3 {
				t.Errorf("manifests left %v, want all 3", left)
			}
		})
	}
}
