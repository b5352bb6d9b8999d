package coordinator

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
)

// ErrCorrupt is returned for a system manifest that does not decode or
// whose checksum or contents do not hold.
var ErrCorrupt = fmt.Errorf("corrupt system manifest: %w", blockdev.ErrCorrupt)

const (
	manifestFormat  = "strata-system-backup"
	manifestVersion = 1
	// maxManifestSize bounds a system manifest object.
	maxManifestSize = 16 << 20
	manifestPrefix  = "system/"
)

var idRE = regexp.MustCompile(`^[0-9]{8}t[0-9]{6}z-[0-9a-f]{8}$`)

// validID reports whether s is a system backup id (20261127t010203z-0a1b2c3d).
func validID(s string) bool { return idRE.MatchString(s) }

// ManifestKey is the object key of system backup id's manifest on every
// target.
func ManifestKey(id string) string { return manifestPrefix + id + ".json" }

// TargetConfig is a target as the configuration records it: no secrets.
type TargetConfig struct {
	Name    string `json:"name"`
	URL     string `json:"url"`
	Kind    string `json:"kind"`
	Default bool   `json:"default"`
}

// AgentConfig is an agent of the system.
type AgentConfig struct {
	Name string `json:"name"`
	// Addr is how the coordinator reached it (a socket path or URL).
	Addr string `json:"addr"`
}

// VolumeConfig is a volume and its settings.
type VolumeConfig struct {
	Agent string `json:"agent"`
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	// TargetSetting is the volume's target setting ("" means the default
	// target); Target is the target it resolved to.
	TargetSetting string `json:"target_setting,omitempty"`
	Target        string `json:"target"`
}

// Settings are the system backup's own settings.
type Settings struct {
	Policy           string `json:"policy"`
	ConsistencyGroup bool   `json:"consistency_group"`
}

// Config is the system configuration captured when a system backup opens.
type Config struct {
	Agents   []AgentConfig  `json:"agents"`
	Targets  []TargetConfig `json:"targets"`
	Volumes  []VolumeConfig `json:"volumes"`
	Settings Settings       `json:"settings"`
}

// DefaultTarget returns the name of the default target.
func (c *Config) DefaultTarget() string {
	for _, t := range c.Targets {
		if t.Default {
			return t.Name
		}
	}
	return ""
}

func (c *Config) target(name string) (TargetConfig, bool) {
	for _, t := range c.Targets {
		if t.Name == name {
			return t, true
		}
	}
	return TargetConfig{}, false
}

// VolumeBackup is one volume's acknowledged backup in a system manifest.
type VolumeBackup struct {
	Agent       string `json:"agent"`
	Volume      string `json:"volume"`
	Target      string `json:"target"`
	BackupID    string `json:"backup_id"`
	ManifestKey string `json:"manifest_key"`
	Digest      string `json:"digest"`
	Size        int64  `json:"size"`
	Snapshot    string `json:"snapshot"`
	// Reused is set when the backup of an earlier system backup was
	// reused (policy if-unchanged).
	Reused bool `json:"reused,omitempty"`
}

// Manifest is a system backup: the configuration and, for every volume of
// it, the backup the acknowledgement named. FORMAT.md documents it.
type Manifest struct {
	Format    string         `json:"format"`
	Version   int            `json:"version"`
	ID        string         `json:"id"`
	Token     uint64         `json:"token"`
	Started   time.Time      `json:"started"`
	Committed time.Time      `json:"committed"`
	Config    Config         `json:"config"`
	Volumes   []VolumeBackup `json:"volumes"`
	// Checksum is the SHA-256 of the manifest encoded with Checksum and
	// MAC empty.
	Checksum string `json:"checksum"`
	// MAC, written by a coordinator with a repository key, authenticates
	// the checksum (so the whole manifest) under that key: without it,
	// anyone able to write to a target could plant or change a system
	// manifest, and a restore of it would register the targets it names,
	// with the credentials the operator gives for their names, and restore
	// the backups it chooses; a deletion of it would delete the volume
	// backups it names.
	MAC string `json:"mac,omitempty"`
}

// systemMACLabel keeps system manifests' MACs apart from every other MAC
// under the key (backupd.Key.LabelledMAC).
const systemMACLabel = "strata system manifest mac v1"

// Encode returns the manifest's bytes with its checksum set, and its MAC
// under k unless k is nil.
func (m *Manifest) Encode(k *backupd.Key) ([]byte, error) {
	c := *m
	c.Format, c.Version, c.Checksum, c.MAC = manifestFormat, manifestVersion, "", ""
	if err := c.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	c.Checksum = hex.EncodeToString(sum[:])
	if k != nil {
		c.MAC = k.LabelledMAC(systemMACLabel, sum[:])
	}
	return json.MarshalIndent(&c, "", "  ")
}

// Authenticate checks m's MAC under k (nil: no key, nothing to check). A
// manifest without one is refused unless allowUnauthenticated (written
// before system manifests carried a MAC, or by a coordinator without a
// key); one whose MAC fails is ErrCorrupt.
func (m *Manifest) Authenticate(k *backupd.Key, allowUnauthenticated bool) error {
	if k == nil || (m.MAC == "" && allowUnauthenticated) {
		return nil
	}
	sum, err := hex.DecodeString(m.Checksum)
	switch {
	case m.MAC == "":
		return fmt.Errorf("system manifest %s carries no MAC, so anyone able to write to the target could have written or changed it; if a coordinator without the key, or one before system manifests were authenticated (2026-11-28), wrote it, allow unauthenticated backups (strata server --backup-allow-unencrypted): %w: %w", m.ID, backupd.ErrKey, ErrInvalid)
	case err != nil || !hmac.Equal([]byte(m.MAC), []byte(k.LabelledMAC(systemMACLabel, sum))):
		return fmt.Errorf("system manifest %s fails its MAC: it was changed after it was written, or written with another key: %w", m.ID, ErrCorrupt)
	}
	return nil
}

// DecodeManifest parses and checks a system manifest: its checksum, then
// every field (Validate). Anything wrong is ErrCorrupt, naming what.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("system manifest of %d bytes (at most %d): %w", len(b), maxManifestSize, ErrCorrupt)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("system manifest does not decode: %v: %w", err, ErrCorrupt)
	}
	if dec.More() {
		return nil, fmt.Errorf("system manifest: trailing data: %w", ErrCorrupt)
	}
	if m.Format != manifestFormat {
		return nil, fmt.Errorf("system manifest: format %q, want %q: %w", m.Format, manifestFormat, ErrCorrupt)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("system manifest %s: version %d, this build reads %d: %w", m.ID, m.Version, manifestVersion, ErrCorrupt)
	}
	c := m
	c.Checksum, c.MAC = "", ""
	body, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	if want := hex.EncodeToString(sum[:]); m.Checksum != want {
		return nil, fmt.Errorf("system manifest %s: checksum %q does not match its contents (%s): it was altered or damaged: %w", m.ID, m.Checksum, want, ErrCorrupt)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the manifest's fields: ids and names, one target marked
// default, every volume's target in the configuration, and exactly one
// backup per configured volume, on that volume's target.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("system manifest %s: %s: %w", m.ID, fmt.Sprintf(format, a...), ErrCorrupt)
	}
	if !validID(m.ID) {
		return bad("id %q is not a system backup id", m.ID)
	}
	if mac, err := hex.DecodeString(m.MAC); m.MAC != "" && (err != nil || len(mac) != 32) {
		return bad("mac %q is not 64 hex digits", m.MAC)
	}
	if m.Token == 0 {
		return bad("no fencing token")
	}
	defaults := 0
	seenT := map[string]bool{}
	for _, t := range m.Config.Targets {
		if !backupd.ValidName(t.Name) || seenT[t.Name] || t.URL == "" {
			return bad("target %q: invalid, repeated or without URL", t.Name)
		}
		seenT[t.Name] = true
		if t.Default {
			defaults++
		}
	}
	if defaults != 1 {
		return bad("%d default targets, want 1", defaults)
	}
	seenA := map[string]bool{}
	for _, a := range m.Config.Agents {
		if !backupd.ValidName(a.Name) || seenA[a.Name] {
			return bad("agent %q: invalid or repeated", a.Name)
		}
		seenA[a.Name] = true
	}
	vols := map[string]VolumeConfig{}
	for _, v := range m.Config.Volumes {
		k := v.Agent + "/" + v.Name
		if !seenA[v.Agent] || !backupd.ValidName(v.Name) || vols[k].Name != "" || !seenT[v.Target] || v.Size <= 0 {
			return bad("volume %q of agent %q: invalid, repeated, or its agent or target %q is not in the configuration", v.Name, v.Agent, v.Target)
		}
		vols[k] = v
	}
	if len(m.Volumes) != len(vols) {
		return bad("%d volume backups for %d volumes", len(m.Volumes), len(vols))
	}
	done := map[string]bool{}
	for _, b := range m.Volumes {
		k := b.Agent + "/" + b.Volume
		v, ok := vols[k]
		if !ok || done[k] {
			return bad("backup of volume %q of agent %q: not a configured volume, or repeated", b.Volume, b.Agent)
		}
		done[k] = true
		if b.Target != v.Target {
			return bad("volume %q: backup on target %q, configured on %q", b.Volume, b.Target, v.Target)
		}
		if vol, id, err := backupd.ParseManifestKey(b.ManifestKey); err != nil || vol != b.Volume || id != b.BackupID {
			return bad("volume %q: manifest key %q does not name backup %q", b.Volume, b.ManifestKey, b.BackupID)
		}
		if d, err := hex.DecodeString(b.Digest); err != nil || len(d) != sha256.Size {
			return bad("volume %q: digest %q", b.Volume, b.Digest)
		}
		if b.Size <= 0 || b.Size > backupd.MaxVolumeSize {
			return bad("volume %q: backup size %d", b.Volume, b.Size)
		}
	}
	return nil
}
