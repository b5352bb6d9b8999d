package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/strata-block/strata/"

// TestImportRules fails when a package depends on a package DESIGN.md
// forbids it to know.
//
// Two kinds of rule. "forbidden" is transitive: nothing the package or its
// tests pull in may be that package. "noDirect" is about the package's own
// (non-test) imports: the frontends know only blockdev.Volume and the agent
// reaches the store through blockdev's Manager, yet blockdev itself is
// built on snapshot, so they depend on it indirectly by design; what they
// must not do is import it and reach around blockdev's interface.
func TestImportRules(t *testing.T) {
	t.Parallel()
	frontendForbidden := []string{"plugins", "backupd", "blockdev/agent"}
	rules := []struct {
		pkg       string
		forbidden []string
		noDirect  []string
	}{
		{pkg: "snapshot", forbidden: []string{"blockdev", "plugins", "backupd", "cmd"}},
		{pkg: "blockdev", forbidden: []string{"blockdev/nbd", "blockdev/fuse", "blockdev/attach", "blockdev/agent", "plugins", "backupd"}},
		{pkg: "blockdev/nbd", forbidden: append(frontendForbidden, "blockdev/fuse", "blockdev/attach"), noDirect: []string{"snapshot"}},
		{pkg: "blockdev/fuse", forbidden: append(frontendForbidden, "blockdev/nbd", "blockdev/attach"), noDirect: []string{"snapshot"}},
		{pkg: "blockdev/attach", forbidden: frontendForbidden, noDirect: []string{"snapshot"}},
		{pkg: "blockdev/agent", forbidden: []string{"plugins", "backupd"}, noDirect: []string{"snapshot"}},
		{pkg: "plugins", forbidden: []string{"snapshot", "blockdev", "backupd"}},
		// backupd reaches volumes through blockdev (built on snapshot) or the
		// agent API, and targets only through the plugins interface.
		{pkg: "backupd", forbidden: []string{"blockdev/nbd", "blockdev/fuse", "blockdev/attach"}, noDirect: []string{"snapshot", "plugins/fs", "plugins/s3"}},
		// The coordinator drives agents through their API only. It links
		// the frontends through blockdev/agent, whose Client it uses, so
		// the rule is on direct imports.
		{pkg: "backupd/coordinator", noDirect: []string{"snapshot", "plugins/fs", "plugins/s3", "blockdev/nbd", "blockdev/fuse", "blockdev/attach"}},
		{pkg: "backupd/targets", forbidden: []string{"blockdev/nbd", "blockdev/fuse", "blockdev/attach"}, noDirect: []string{"snapshot", "plugins/fs", "plugins/s3"}},
	}
	for _, r := range rules {
		t.Run(strings.ReplaceAll(r.pkg, "/", "_"), func(t *testing.T) {
			t.Parallel()
			deps := goList(t, "-deps", "-test", mod+r.pkg)
			// The listing must see module packages for the rules to mean
			// anything: every package here depends on itself.
			if !strings.Contains(deps, mod+r.pkg+"\n") {
				t.Fatalf("go list %s does not list the package itself:\n%s", r.pkg, deps)
			}
			for _, d := range strings.Fields(deps) {
				if f := matchRule(d, r.forbidden); f != "" {
					t.Errorf("%s depends on %s, which DESIGN.md forbids", r.pkg, f)
				}
			}
			if len(r.noDirect) == 0 {
				return
			}
			for _, d := range strings.Fields(goList(t, "-f", `{{join .Imports "\n"}}`, mod+r.pkg)) {
				if f := matchRule(d, r.noDirect); f != "" {
					t.Errorf("%s imports %s directly; it must go through blockdev", r.pkg, f)
				}
			}
		})
	}
}

func goList(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	if len(strings.TrimSpace(string(out))) == 0 && args[0] == "-deps" {
		t.Fatalf("go list %v listed nothing", args)
	}
	return string(out)
}

// matchRule returns the module-relative package of import path d if it is
// one of rules or below one, else "".
func matchRule(d string, rules []string) string {
	rel, ok := strings.CutPrefix(d, mod)
	if !ok {
		return ""
	}
	rel, _, _ = strings.Cut(rel, " ") // test variants: "pkg [pkg.test]"
	for _, f := range rules {
		if rel == f || strings.HasPrefix(rel, f+"/") {
			return rel
		}
	}
	return ""
}
