package main

import (
	"bytes"
	"encoding/json"
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

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
		msg  string // in the error, if set
	}{
		{in: "4096", want: 4096},
		{in: "512MiB", want: 512 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "10G", want: 10 << 30},
		{in: "1gb", want: 1 << 30},
		{in: "2 TiB", want: 2 << 40},
		{in: "", bad: true},
		{in: "GiB", bad: true},
		{in: "-1", bad: true},
		// Decimals that come to a whole number of bytes.
		{in: "1.5G", want: 3 << 29},
		{in: "1.5GiB", want: 3 << 29},
		{in: "0.5K", want: 512},
		{in: "2.25 MiB", want: 9 << 18},
		{in: "1.0", want: 1},
		{in: "0.001T", bad: true, msg: "not a whole number of bytes"},
		{in: "1.3K", bad: true, msg: "not a whole number of bytes"},
		{in: "1.5", bad: true, msg: "not a whole number of bytes"},
		{in: "1.", bad: true},
		{in: ".5G", bad: true},
		{in: "1.2.3G", bad: true},
		{in: "4096.0P", want: 1 << 62},
		{in: "4096.5P", bad: true, msg: "out of range"},
		{in: "12Q", bad: true, msg: "unknown unit"},
		{in: "1XiB", bad: true},
		{in: "99999999999P", bad: true},
	} {
		got, err := parseSize(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want an error", tc.in, got)
			} else if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("parseSize(%q): error %q does not say %q", tc.in, err, tc.msg)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}
