package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		version string
		args    []string
		json    bool
	}{
		{name: "default json", version: "dev", args: []string{"version", "--json"}, json: true},
		{name: "ldflags json", version: "v0.1.0", args: []string{"version", "--json"}, json: true},
		{name: "plain", version: "v0.1.0", args: []string{"version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			cmd := newRootCmd(tt.version)
			cmd.SetArgs(tt.args)
			cmd.SetOut(&stdout)
			cmd.SetErr(&stderr)
			if err := cmd.ExecuteContext(t.Context()); err != nil {
				t.Fatalf("strata %s: %v (stderr %q)", strings.Join(tt.args, " "), err, stderr.String())
			}
			if !tt.json {
				if got := strings.TrimSpace(stdout.String()); got != tt.version {
					t.Errorf("strata %s printed %q, want %q", strings.Join(tt.args, " "), got, tt.version)
				}
				return
			}
			var got versionInfo
			dec := json.NewDecoder(&stdout)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("strata %s: output is not the JSON version object: %v", strings.Join(tt.args, " "), err)
			}
			if got.Version != tt.version {
				t.Errorf("strata %s: version = %q, want %q", strings.Join(tt.args, " "), got.Version, tt.version)
			}
		})
	}
}

func TestServerNotImplemented(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	cmd := newRootCmd("dev")
	cmd.SetArgs([]string{"server"})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.ExecuteContext(t.Context())
	if !errors.Is(err, errServerNotImplemented) {
		t.Fatalf("strata server: err = %v, want %v", err, errServerNotImplemented)
	}
	if !strings.Contains(stderr.String(), "issue 5") {
		t.Errorf("strata server: stderr %q does not mention issue 5", stderr.String())
	}
}
