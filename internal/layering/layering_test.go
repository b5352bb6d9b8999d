package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/strata-block/strata/"

// TestImportRules fails when a package depends, directly or not, on a
// package DESIGN.md forbids it to know.
func TestImportRules(t *testing.T) {
	t.Parallel()
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{pkg: "snapshot", forbidden: []string{"blockdev", "plugins", "backupd", "cmd"}},
		{pkg: "blockdev", forbidden: []string{"blockdev/nbd", "blockdev/fuse", "blockdev/attach", "blockdev/agent", "plugins", "backupd"}},
		{pkg: "blockdev/nbd", forbidden: []string{"snapshot", "plugins", "backupd", "blockdev/fuse", "blockdev/agent"}},
		{pkg: "blockdev/fuse", forbidden: []string{"snapshot", "plugins", "backupd", "blockdev/nbd", "blockdev/agent"}},
		{pkg: "blockdev/attach", forbidden: []string{"snapshot", "plugins", "backupd", "blockdev/agent"}},
		{pkg: "plugins", forbidden: []string{"snapshot", "blockdev", "backupd"}},
		{pkg: "backupd", forbidden: []string{"snapshot"}},
	}
	for _, r := range rules {
		t.Run(strings.ReplaceAll(r.pkg, "/", "_"), func(t *testing.T) {
			t.Parallel()
			out, err := exec.CommandContext(t.Context(), "go", "list", "-deps", "-test", mod+r.pkg).Output()
			if err != nil {
				t.Fatalf("go list %s: %v", r.pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) == 0 {
				t.Fatalf("go list %s listed nothing", r.pkg)
			}
			// The listing must see module packages for the rules to mean
			// anything: every package here depends on itself.
			if !strings.Contains(string(out), mod+r.pkg+"\n") {
				t.Fatalf("go list %s does not list the package itself:\n%s", r.pkg, out)
			}
			for _, d := range deps {
				rel, ok := strings.CutPrefix(d, mod)
				if !ok {
					continue
				}
				rel, _, _ = strings.Cut(rel, " ") // test variants: "pkg [pkg.test]"
				for _, f := range r.forbidden {
					if rel == f || strings.HasPrefix(rel, f+"/") {
						t.Errorf("%s depends on %s, which DESIGN.md forbids", r.pkg, rel)
					}
				}
			}
		})
	}
}
