package coordinator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
)

func testManifest() *Manifest {
	dig := strings.Repeat("ab", 32)
	return &Manifest{
		ID: "20261127t010203z-0a1b2c3d", Token: 7,
		Started: time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC), Committed: time.Date(2026, 11, 27, 1, 3, 0, 0, time.UTC),
		Config: Config{
			Agents:  []AgentConfig{{Name: "local", Addr: "/d/strata.sock"}, {Name: "b", Addr: "/e/strata.sock"}},
			Targets: []TargetConfig{{Name: "a", URL: "file:///srv/a", Kind: "fs", Default: true}, {Name: "s3", URL: "s3://bk/p?endpoint=http://127.0.0.1:7070", Kind: "s3"}},
			Volumes: []VolumeConfig{
				{Agent: "local", Name: "vol-a", Size: 1 << 20, Target: "a"},
				{Agent: "b", Name: "vol-b", Size: 2 << 20, TargetSetting: "s3", Target: "s3"},
			},
			Settings: Settings{Policy: PolicyAlways},
		},
		Volumes: []VolumeBackup{
			{Agent: "local", Volume: "vol-a", Target: "a", BackupID: "0123456789abcdef0123456789abcdef", ManifestKey: backupd.ManifestKey("vol-a", "0123456789abcdef0123456789abcdef"), Digest: dig, Size: 1 << 20, Snapshot: "sys-x"},
			{Agent: "b", Volume: "vol-b", Target: "s3", BackupID: "fedcba9876543210fedcba9876543210", ManifestKey: backupd.ManifestKey("vol-b", "fedcba9876543210fedcba9876543210"), Digest: dig, Size: 2 << 20, Snapshot: "sys-x"},
		},
	}
}

// TestManifestRoundTrip encodes and decodes a manifest and checks that
// every kind of damage or inconsistency is refused as ErrCorrupt with a
// message naming it.
func TestManifestRoundTrip(t *testing.T) {
	m := testManifest()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := got.Encode(nil)
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("re-encoding differs: %v\n%s\n%s", err, b, b2)
	}
	tests := []struct {
		name string
		edit func(m *Manifest)
		raw  func(b []byte) []byte
		want string
	}{
		{name: "flipped byte", raw: func(b []byte) []byte { return bytes.Replace(b, []byte("vol-b"), []byte("vol-c"), 1) }, want: "checksum"},
		{name: "not json", raw: func([]byte) []byte { return []byte("{") }, want: "does not decode"},
		{name: "trailing", raw: func(b []byte) []byte { return append(b, []byte(" {}")...) }, want: "trailing"},
		{name: "unknown field", raw: func(b []byte) []byte { return bytes.Replace(b, []byte(`"token"`), []byte(`"tokn"`), 1) }, want: "does not decode"},
		{name: "missing volume backup", edit: func(m *Manifest) { m.Volumes = m.Volumes[:1] }, want: "1 volume backups for 2 volumes"},
		{name: "backup on another target", edit: func(m *Manifest) { m.Volumes[1].Target = "a" }, want: "configured on"},
		{name: "key names another backup", edit: func(m *Manifest) { m.Volumes[0].ManifestKey = "backups/vol-a/x" }, want: "does not name"},
		{name: "no default target", edit: func(m *Manifest) { m.Config.Targets[0].Default = false }, want: "default targets"},
		{name: "unknown agent", edit: func(m *Manifest) { m.Config.Volumes[1].Agent = "zz"; m.Volumes[1].Agent = "zz" }, want: "not in the configuration"},
		{name: "bad digest", edit: func(m *Manifest) { m.Volumes[0].Digest = "xyz" }, want: "digest"},
		{name: "no token", edit: func(m *Manifest) { m.Token = 0 }, want: "token"},
		{name: "bad id", edit: func(m *Manifest) { m.ID = "../x" }, want: "not a system backup id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var raw []byte
			if tc.edit != nil {
				m := testManifest()
				tc.edit(m)
				if _, err := m.Encode(nil); err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Encode = %v, want ErrCorrupt saying %q", err, tc.want)
				}
				// Decode refuses the same manifest with a valid checksum.
				c := *m
				c.Format, c.Version = manifestFormat, manifestVersion
				raw = encodeUnchecked(t, &c)
			} else {
				raw = tc.raw(bytes.Clone(b))
			}
			if _, err := DecodeManifest(raw); err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeManifest = %v, want ErrCorrupt saying %q", err, tc.want)
			}
		})
	}
}

// encodeUnchecked encodes m with a correct checksum (its MAC kept as it
// is), skipping Validate: what someone able to write to a target but
// without the key can write.
func encodeUnchecked(t *testing.T, m *Manifest) []byte {
	t.Helper()
	c := *m
	c.Checksum, c.MAC = "", ""
	body := mustJSON(t, &c)
	c.Checksum, c.MAC = sha256Hex(body), m.MAC
	return mustJSON(t, &c)
}

// TestSystemManifestMAC: a system manifest written with a key carries a
// MAC that the key checks. Changed by someone able to write to the target
// but without the key — a target's URL pointed elsewhere (a restore
// would register it with the credentials given for the name), a volume
// backup's digest changed, the MAC stripped — its checksum can be made to
// match again, but not its MAC. Before, a matching checksum was all a
// manifest needed.
func TestSystemManifestMAC(t *testing.T) {
	t.Parallel()
	k, err := backupd.NewKey(bytes.Repeat([]byte{5}, backupd.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	other, err := backupd.NewKey(bytes.Repeat([]byte{6}, backupd.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	b, err := testManifest().Encode(k)
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.MAC == "" {
		t.Fatal("a manifest encoded with a key has no MAC")
	}
	if err := m.Authenticate(k, false); err != nil {
		t.Fatalf("the authentic manifest: %v", err)
	}
	if err := m.Authenticate(nil, false); err != nil {
		t.Fatalf("without a key nothing is checked: %v", err)
	}
	if err := m.Authenticate(other, true); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("under another key: %v, want ErrCorrupt", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(m *Manifest)
		want  error
		allow bool // AllowUnauthenticated accepts it
	}{
		{name: "target URL", edit: func(m *Manifest) { m.Config.Targets[1].URL = "s3://attacker/p?endpoint=http://203.0.113.9" }, want: ErrCorrupt},
		{name: "volume backup digest", edit: func(m *Manifest) { m.Volumes[0].Digest = strings.Repeat("cd", 32) }, want: ErrCorrupt},
		{name: "token", edit: func(m *Manifest) { m.Token++ }, want: ErrCorrupt},
		{name: "MAC stripped", edit: func(m *Manifest) { m.MAC = "" }, want: backupd.ErrKey, allow: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := DecodeManifest(b)
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(c)
			got, err := DecodeManifest(encodeUnchecked(t, c))
			if err != nil {
				t.Fatalf("the changed manifest with its checksum fixed: %v", err)
			}
			if err := got.Authenticate(k, false); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "MAC") {
				t.Fatalf("changed %s: %v, want %v naming the MAC", tc.name, err, tc.want)
			}
			if err := got.Authenticate(k, true); (err == nil) != tc.allow {
				t.Fatalf("changed %s, unauthenticated allowed: %v", tc.name, err)
			}
		})
	}
}

var fuzzKey, _ = backupd.NewKey(bytes.Repeat([]byte{9}, backupd.KeySize))

// FuzzDecodeManifest: DecodeManifest never panics, and whatever it
// accepts encodes back to something it accepts again.
func FuzzDecodeManifest(f *testing.F) {
	b, err := testManifest().Encode(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, false)
	f.Add(b, true)
	if b, err = testManifest().Encode(fuzzKey); err != nil {
		f.Fatal(err)
	}
	f.Add(b, false)
	f.Add([]byte("{}"), false)
	f.Add([]byte(`{"format":"strata-system-backup","version":1}`), true)
	f.Fuzz(func(t *testing.T, b []byte, fixSum bool) {
		// With fixSum, what decodes as JSON gets a matching checksum, so
		// that mutations reach Validate behind it.
		if fixSum {
			var m Manifest
			if json.Unmarshal(b, &m) == nil {
				b = encodeUnchecked(t, &m)
			}
		}
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		out, err := m.Encode(nil)
		if err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
		if _, err := DecodeManifest(out); err != nil {
			t.Fatalf("re-encoded manifest refused: %v", err)
		}
		// Written again with a key, it authenticates under that key.
		if out, err = m.Encode(fuzzKey); err != nil {
			t.Fatalf("accepted manifest does not encode with a key: %v", err)
		}
		if m2, err := DecodeManifest(out); err != nil || m2.Authenticate(fuzzKey, false) != nil {
			t.Fatalf("manifest written with a key: %v, or it does not authenticate", err)
		}
	})
}

func TestParseFaults(t *testing.T) {
	tests := []struct {
		spec    string
		want    faults
		wantErr bool
	}{
		{spec: "", want: faults{}},
		{spec: "kill-at=acked", want: faults{killAt: "acked"}},
		{spec: "kill-at=written, delay-ack=vol-b:2s", want: faults{killAt: "written", delayVol: "vol-b", delayFor: 2 * time.Second}},
		{spec: "delay-ack=vol-b", wantErr: true},
		{spec: "explode", wantErr: true},
	}
	for _, tc := range tests {
		got, err := parseFaults(tc.spec)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("parseFaults(%q) = %+v, %v; want %+v, error %v", tc.spec, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestCheckAck covers the state checks Accept makes before it looks at
// the target: only the open run, its token, its volumes, once each, on
// the volume's target.
func TestCheckAck(t *testing.T) {
	m := testManifest()
	run := &Run{ID: m.ID, Token: 7, State: StateOpen, Config: &m.Config,
		Acks: map[string]Ack{"local/vol-a": {System: m.ID, Token: 7, VolumeBackup: VolumeBackup{Agent: "local", Volume: "vol-a", Target: "a", BackupID: "0123456789abcdef0123456789abcdef", Snapshot: snapshotPrefix + m.ID}}}}
	good := Ack{System: m.ID, Token: 7, VolumeBackup: VolumeBackup{Agent: "b", Volume: "vol-b", Target: "s3", Snapshot: snapshotPrefix + m.ID}}
	tests := []struct {
		name string
		edit func(a *Ack, r *Run)
		want error
		dup  bool
	}{
		{name: "good", edit: func(*Ack, *Run) {}},
		{name: "stale token", edit: func(a *Ack, _ *Run) { a.Token = 6 }, want: ErrStale},
		{name: "newer token", edit: func(a *Ack, _ *Run) { a.Token = 8 }, want: ErrStale},
		{name: "failed run", edit: func(_ *Ack, r *Run) { r.State = StateFailed }, want: ErrStale},
		{name: "committing run", edit: func(_ *Ack, r *Run) { r.State = StateCommitting }, want: ErrStale},
		{name: "foreign volume", edit: func(a *Ack, _ *Run) { a.Volume = "vol-z" }, want: ErrStale},
		{name: "other agent", edit: func(a *Ack, _ *Run) { a.Agent = "local" }, want: ErrStale},
		{name: "conflicting duplicate", edit: func(a *Ack, _ *Run) { a.Agent, a.Volume, a.Target = "local", "vol-a", "a" }, want: ErrStale},
		{name: "identical duplicate", edit: func(a *Ack, r *Run) { *a = r.Acks["local/vol-a"] }, dup: true},
		{name: "not the system backup's snapshot", edit: func(a *Ack, _ *Run) { a.Snapshot = "monday" }, want: ErrRejected},
		{name: "reused keeps its snapshot", edit: func(a *Ack, _ *Run) { a.Snapshot, a.Reused = "sys-older", true }},
		{name: "wrong target", edit: func(a *Ack, _ *Run) { a.Target = "a" }, want: ErrRejected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, r := good, *run
			tc.edit(&a, &r)
			_, dup, err := checkAck(&r, a)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) || dup != tc.dup {
				t.Fatalf("checkAck = dup %v, %v; want dup %v, %v", dup, err, tc.dup, tc.want)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
