package agent

// Fuzz targets for the agent's local files: the state file (openState)
// and the TOML configuration (LoadConfig).
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzOpenState$' -fuzztime 60s ./blockdev/agent/

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func FuzzOpenState(f *testing.F) {
	v2 := persisted{Version: stateVersion,
		Attachments: map[string]*Attachment{
			"vol-a": {Device: "/dev/loop7", Kind: "loop", MountPoint: "/mnt/a", FSType: "ext4"},
			"vol-b": {Device: "/dev/nbd0", Kind: "nbd"},
		},
		Volumes: map[string]*volumeSettings{"vol-a": {Target: "offsite"}}}
	b, err := json.MarshalIndent(v2, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version":1,"attachments":{"vol-a":{"device":"/dev/loop7","kind":"loop"}}}`))
	f.Add([]byte(`{"version":2,"attachments":{"x":null},"volumes":{"vol-a":null,"vol-b":{}}}`))
	f.Add([]byte(`{"version":2,"attachments":{"x":{}},"volumes":{"vol-a":{"target":""}},"extra":1}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`{"version":0}`))
	f.Add([]byte(`{"version":2,"attachments":[]}`))
	f.Add([]byte(`{"version":2} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, stateName)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := openState(path)
		if err != nil {
			if s != nil {
				t.Fatalf("error %v with a state", err)
			}
			if !strings.HasPrefix(err.Error(), "agent state "+path+": ") {
				t.Fatalf("error %q does not name the state file", err)
			}
			return
		}
		p := s.st
		if p.Version != stateVersion || p.Attachments == nil || p.Volumes == nil {
			t.Fatalf("accepted state: version %d, attachments %v, volumes %v", p.Version, p.Attachments, p.Volumes)
		}
		for name, at := range p.Attachments {
			if at == nil {
				t.Fatalf("attachment %q is nil", name)
			}
		}
		for name, vs := range p.Volumes {
			if vs == nil || *vs == (volumeSettings{}) {
				t.Fatalf("volume %q has empty settings %v", name, vs)
			}
		}
		if all := s.all(); len(all) != len(p.Attachments) {
			t.Fatalf("all() = %d attachments of %d", len(all), len(p.Attachments))
		}
		// Saved (as the next change saves it) and read again: the same.
		if err := s.update(func(*persisted) {}); err != nil {
			t.Fatalf("saving the state read: %v", err)
		}
		s2, err := openState(path)
		if err != nil {
			t.Fatalf("reading the state saved: %v", err)
		}
		if !reflect.DeepEqual(s2.st, p) {
			t.Fatalf("state %+v saved reads back as %+v", p, s2.st)
		}
	})
}

func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte(`data_dir = "/var/lib/strata"
nbd_listen = "127.0.0.1:10809"
api_listen = ":7443"
tls_cert = "/etc/strata/cert.pem"
tls_key = "/etc/strata/key.pem"
token_file = "/etc/strata/token"
fuse = "auto"
shutdown_timeout = "45s"
log_level = "debug"
`))
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(Config{DataDir: "d \"q\" \\ \t é", FUSE: "off", ShutdownTimeout: duration{time.Hour + 2*time.Minute + 3500*time.Millisecond}}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("data_dir = 'literal\\path'\n# a comment\n"))
	f.Add([]byte("data_dir = \"\"\"\nmulti\nline\"\"\"\n"))
	f.Add([]byte("shutdown_timeout = \"-5s\"\n"))
	f.Add([]byte("shutdown_timeout = 30\n"))
	f.Add([]byte("shutdown_timeout = \"30\"\n"))
	f.Add([]byte("unknown = 1\n"))
	f.Add([]byte("[table]\nx = 1\n"))
	f.Add([]byte("data_dir = \"a\"\ndata_dir = \"b\"\n"))
	f.Add([]byte("data_dir = \"\\uD800\"\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "strata.toml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var c Config
		if err := LoadConfig(path, true, &c); err != nil {
			if !strings.HasPrefix(err.Error(), "config "+path+": ") {
				t.Fatalf("error %q does not name the config file", err)
			}
			return
		}
		// Written again by the TOML encoder, it loads the same.
		var out bytes.Buffer
		if err := toml.NewEncoder(&out).Encode(c); err != nil {
			t.Fatalf("encoding %+v: %v", c, err)
		}
		path2 := filepath.Join(dir, "again.toml")
		if err := os.WriteFile(path2, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		var c2 Config
		if err := LoadConfig(path2, true, &c2); err != nil {
			t.Fatalf("config %+v re-encoded as %q: %v", c, out.Bytes(), err)
		}
		if c2 != c {
			t.Fatalf("config %+v re-encoded as %q loads as %+v", c, out.Bytes(), c2)
		}
		// A file that is not there is no error only where allowed.
		missing := filepath.Join(dir, "missing.toml")
		if err := LoadConfig(missing, false, &c2); err != nil || c2 != c {
			t.Fatalf("LoadConfig of a missing default file: %v, config changed: %v", err, c2 != c)
		}
		if err := LoadConfig(missing, true, &c2); err == nil {
			t.Fatal("LoadConfig of a missing named file succeeded")
		}
	})
}
