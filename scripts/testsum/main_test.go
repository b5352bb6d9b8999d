package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	const pkg = `"Package":"p"`
	lines := func(ls ...string) string { return strings.Join(ls, "\n") + "\n" }
	pass := lines(
		`{"Action":"start",`+pkg+`}`,
		`{"Action":"run",`+pkg+`,"Test":"TestA"}`,
		`{"Action":"output",`+pkg+`,"Test":"TestA","Output":"=== RUN   TestA\n"}`,
		`{"Action":"output",`+pkg+`,"Test":"TestA","Output":"    a_test.go:1: quiet\n"}`,
		`{"Action":"pass",`+pkg+`,"Test":"TestA"}`,
		`{"Action":"output",`+pkg+`,"Output":"ok  \tp\t0.1s\n"}`,
		`{"Action":"pass",`+pkg+`}`,
	)
	skipped := lines(
		`{"Action":"start",`+pkg+`}`,
		`{"Action":"output",`+pkg+`,"Test":"TestS","Output":"    s_test.go:9: needs fio\n"}`,
		`{"Action":"skip",`+pkg+`,"Test":"TestS"}`,
		`{"Action":"pass",`+pkg+`}`,
	)
	failed := lines(
		`{"Action":"start",`+pkg+`}`,
		`{"Action":"output",`+pkg+`,"Test":"TestF","Output":"    f_test.go:3: got 1, want 2\n"}`,
		`{"Action":"fail",`+pkg+`,"Test":"TestF"}`,
		`{"Action":"fail",`+pkg+`}`,
	)
	panicked := lines(
		`{"Action":"start",`+pkg+`}`,
		`{"Action":"output",`+pkg+`,"Test":"TestP","Output":"panic: boom\n"}`,
		`{"Action":"fail",`+pkg+`}`,
	)
	cut := lines(`{"Action":"start",` + pkg + `}`)
	tests := []struct {
		name, in, allow string
		ok, verbose     bool
		has, hasNot     string
	}{
		{name: "pass", in: pass, ok: true, has: "ok  \tp\t0.1s", hasNot: "quiet"},
		{name: "pass verbose", in: pass, ok: true, verbose: true, has: "a_test.go:1: quiet"},
		{name: "skip not allowed", in: skipped, has: "SKIP (NOT ALLOWED) p TestS\n    s_test.go:9: needs fio"},
		{name: "skip allowed", in: skipped, allow: "TestS", ok: true, has: "SKIP (allowed) p TestS"},
		{name: "skip allowed by prefix only", in: skipped, allow: "Test", has: "NOT ALLOWED"},
		{name: "failed test shows its output", in: failed, has: "f_test.go:3: got 1, want 2"},
		{name: "panic shows the unfinished test", in: panicked, has: "panic: boom"},
		{name: "cut short", in: cut, has: "no result for package p"},
		{name: "build failure", in: lines(`{"ImportPath":"p","Action":"build-output","Output":"x.go:1: undefined: y\n"}`, `{"ImportPath":"p","Action":"build-fail"}`), has: "undefined: y"},
		{name: "not json", in: "go: cannot find main module\n", ok: true, has: "cannot find main module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var allow *regexp.Regexp
			if tt.allow != "" {
				allow = regexp.MustCompile("^(?:" + tt.allow + ")$")
			}
			var out bytes.Buffer
			ok, err := run(strings.NewReader(tt.in), &out, allow, tt.verbose)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.ok || !strings.Contains(out.String(), tt.has) || (tt.hasNot != "" && strings.Contains(out.String(), tt.hasNot)) {
				t.Errorf("ok %v, want %v; output:\n%s\nwant it to hold %q and not %q", ok, tt.ok, out.String(), tt.has, tt.hasNot)
			}
		})
	}
}
