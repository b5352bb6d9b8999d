package backupd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

const (
	manifestFormat = "strata-volume-backup"
	// MaxVolumeSize bounds the volume size a manifest may declare (16 TiB:
	// a manifest then lists at most 8 Mi pages).
	MaxVolumeSize = 1 << 44
	// maxManifestSize bounds a manifest object: pages of 256 chunks, the
	// smallest any writer used.
	maxManifestSize = 1<<20 + (MaxVolumeSize/(ChunkSize*256))*67
	maxTags         = 64
	maxTagLen       = 256
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidName reports whether s is a valid volume or snapshot name (the
// grammar of blockdev and snapshot: [a-z0-9][a-z0-9._-]{0,62}).
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Stats are the counts a backup run records in its manifest.
type Stats struct {
	BytesScanned  int64 `json:"bytes_scanned"`
	BytesUploaded int64 `json:"bytes_uploaded"`
	ChunksNew     int64 `json:"chunks_new"`
	ChunksDedup   int64 `json:"chunks_dedup"`
	ChunksZero    int64 `json:"chunks_zero"`
	PagesUploaded int64 `json:"pages_uploaded"`
}

// Manifest describes one volume backup: a complete map of the volume (a
// synthetic full) and what it was taken from. FORMAT.md, "Manifest",
// documents each field.
type Manifest struct {
	Format   string `json:"format"`
	Version  int    `json:"version"`
	Volume   string `json:"volume"`
	ID       string `json:"id"`
	Snapshot string `json:"snapshot"`
	// SnapshotCreated is when the snapshot was taken (its creation time
	// in the snapshot store): with the name, it identifies the snapshot,
	// so that a later snapshot given the same name is never taken for it.
	// Zero in manifests written before it was recorded.
	SnapshotCreated time.Time `json:"snapshot_created,omitzero"`
	Parent          string    `json:"parent,omitempty"`
	Created         time.Time `json:"created"`
	Size            int64     `json:"size"`
	ChunkSize       int       `json:"chunk_size"`
	PageChunks      int       `json:"page_chunks"`
	Encrypted       bool      `json:"encrypted"`
	KeyID           string    `json:"key_id,omitempty"`
	Digest          string    `json:"digest"`
	Pages           []string  `json:"pages"`
	Tags            Tags      `json:"tags,omitempty"`
	Stats           Stats     `json:"stats"`
	// MAC authenticates an encrypted backup's manifest (every field
	// above) under the repository key: without it, anyone able to write
	// to the target could relabel, swap or roll back authentic encrypted
	// backups and their map pages. Empty in unencrypted backups and in
	// encrypted ones written before manifests carried it.
	MAC string `json:"mac,omitempty"`
}

// writeMACInput writes what a manifest's MAC covers to w, after the label
// manifestMAC gives it: every field but the MAC, in a fixed binary
// encoding (FORMAT.md, "Manifest MAC"), so the MAC does not depend on how
// the JSON was written.
func (m *Manifest) writeMACInput(w io.Writer) {
	var b []byte
	flush := func() {
		w.Write(b) //nolint:errcheck // a hash never fails
		b = b[:0]
	}
	num := func(v uint64) { b = binary.BigEndian.AppendUint64(b, v) }
	str := func(s string) {
		num(uint64(len(s)))
		b = append(b, s...)
		if len(b) >= 32<<10 {
			flush()
		}
	}
	tm := func(t time.Time) {
		if t.IsZero() {
			str("")
			return
		}
		str(t.UTC().Format(time.RFC3339Nano))
	}
	str(m.Format)
	num(uint64(m.Version))
	str(m.Volume)
	str(m.ID)
	str(m.Snapshot)
	tm(m.SnapshotCreated)
	str(m.Parent)
	tm(m.Created)
	num(uint64(m.Size))
	num(uint64(m.ChunkSize))
	num(uint64(m.PageChunks))
	enc := uint64(0)
	if m.Encrypted {
		enc = 1
	}
	num(enc)
	str(m.KeyID)
	str(m.Digest)
	num(uint64(len(m.Pages)))
	for _, p := range m.Pages {
		str(p)
	}
	num(uint64(len(m.Tags)))
	for _, k := range slices.Sorted(maps.Keys(m.Tags)) {
		str(k)
		str(m.Tags[k])
	}
	st := m.Stats
	for _, v := range []int64{st.BytesScanned, st.BytesUploaded, st.ChunksNew, st.ChunksDedup, st.ChunksZero, st.PagesUploaded} {
		num(uint64(v))
	}
	flush()
}

// Tags are a manifest's labels. Decoding refuses a tags object longer
// than maxTags tags of maxTagLen bytes could be (each byte escaped), so a
// hostile manifest cannot build a huge map before Validate counts it.
type Tags map[string]string

// maxTagsJSON bounds the JSON of valid Tags: braces, and per tag two
// quoted strings of maxTagLen bytes written as \uXXXX escapes, a colon
// and a comma.
const maxTagsJSON = 2 + maxTags*(2*(2+6*maxTagLen)+2)

func (t *Tags) UnmarshalJSON(b []byte) error {
	if len(b) > maxTagsJSON {
		return fmt.Errorf("tags: %d bytes of JSON, more than %d tags of at most %d bytes can take", len(b), maxTags, maxTagLen)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*t = m
	return nil
}

// ManifestKey returns the target key of backup id of volume.
func ManifestKey(volume, id string) string { return "backups/" + volume + "/" + id }

// ParseManifestKey splits a manifest key into volume and backup id.
func ParseManifestKey(key string) (volume, id string, err error) {
	rest, ok := strings.CutPrefix(key, "backups/")
	if ok {
		volume, id, ok = strings.Cut(rest, "/")
	}
	if !ok || !ValidName(volume) || parseHex(id, make([]byte, 16)) != nil {
		return "", "", fmt.Errorf("manifest key %q: want backups/<volume>/<32 hex digits>: %w", key, ErrInvalid)
	}
	return volume, id, nil
}

func newBackupID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Chunks returns the number of chunks of the volume.
func (m *Manifest) Chunks() int64 { return (m.Size + int64(m.ChunkSize) - 1) / int64(m.ChunkSize) }

// pageEntries returns the number of entries of page i.
func (m *Manifest) pageEntries(i int) int {
	n := m.Chunks() - int64(i)*int64(m.PageChunks)
	return int(min(n, int64(m.PageChunks)))
}

// PagesEnd returns the volume offset where map page n begins (the end of
// pages 0 to n-1), at most the volume's size.
func (m *Manifest) PagesEnd(n int) int64 {
	return min(int64(n)*int64(m.PageChunks)*int64(m.ChunkSize), m.Size)
}

// chunkLen returns the plaintext length of chunk c.
func (m *Manifest) chunkLen(c int64) int {
	return int(min(int64(m.ChunkSize), m.Size-c*int64(m.ChunkSize)))
}

// Validate checks every field: names, sizes, counts and ids.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("manifest of backup %q of volume %q: "+format+": %w", append([]any{m.ID, m.Volume}, append(a, ErrCorrupt)...)...)
	}
	switch {
	case m.Format != manifestFormat || m.Version != 1:
		return bad("format %q version %d, want %q version 1", m.Format, m.Version, manifestFormat)
	case !ValidName(m.Volume):
		return bad("invalid volume name")
	case parseHex(m.ID, make([]byte, 16)) != nil:
		return bad("backup id is not 32 lowercase hex digits")
	case !ValidName(m.Snapshot):
		return bad("invalid snapshot name %q", m.Snapshot)
	case m.Parent != "" && parseHex(m.Parent, make([]byte, 16)) != nil:
		return bad("parent %q is not 32 lowercase hex digits", m.Parent)
	case m.Parent == m.ID:
		return bad("is its own parent")
	case m.Created.IsZero():
		return bad("no creation time")
	case m.Size <= 0 || m.Size%4096 != 0 || m.Size > MaxVolumeSize:
		return bad("size %d is not a positive multiple of 4096 up to %d", m.Size, int64(MaxVolumeSize))
	case m.ChunkSize < 4096 || m.ChunkSize > MaxChunkSize || m.ChunkSize&(m.ChunkSize-1) != 0:
		return bad("chunk size %d is not a power of two in 4096..%d", m.ChunkSize, MaxChunkSize)
	case m.PageChunks < 1 || m.PageChunks > 4096:
		return bad("page_chunks %d not in 1..4096", m.PageChunks)
	case m.Encrypted != (m.KeyID != ""):
		return bad("encrypted=%v with key id %q", m.Encrypted, m.KeyID)
	case m.KeyID != "" && parseHex(m.KeyID, make([]byte, 8)) != nil:
		return bad("key id %q is not 16 hex digits", m.KeyID)
	case parseHex(m.Digest, make([]byte, 32)) != nil:
		return bad("digest %q is not 64 hex digits", m.Digest)
	case m.MAC != "" && !m.Encrypted:
		return bad("a MAC in an unencrypted backup")
	case m.MAC != "" && parseHex(m.MAC, make([]byte, 32)) != nil:
		return bad("mac %q is not 64 hex digits", m.MAC)
	case len(m.Tags) > maxTags:
		return bad("%d tags, at most %d", len(m.Tags), maxTags)
	}
	want := (m.Chunks() + int64(m.PageChunks) - 1) / int64(m.PageChunks)
	if int64(len(m.Pages)) != want {
		return bad("%d map pages for %d chunks, want %d", len(m.Pages), m.Chunks(), want)
	}
	for i, p := range m.Pages {
		if parseHex(p, make([]byte, 32)) != nil {
			return bad("page %d id %q is not 64 hex digits", i, p)
		}
	}
	for k, v := range m.Tags {
		if k == "" || len(k) > maxTagLen || len(v) > maxTagLen {
			return bad("tag %q is empty or longer than %d", k, maxTagLen)
		}
	}
	s := m.Stats
	if s.BytesScanned < 0 || s.BytesUploaded < 0 || s.ChunksNew < 0 || s.ChunksDedup < 0 || s.ChunksZero < 0 || s.PagesUploaded < 0 {
		return bad("negative stats")
	}
	return nil
}

// EncodeManifest validates m and encodes it.
func EncodeManifest(m *Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(m, "", " ")
}

// DecodeManifest strictly decodes and validates a manifest: one JSON
// object, no unknown or duplicate-typed fields, nothing after it.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("manifest of %d bytes is larger than %d: %w", len(b), maxManifestSize, ErrCorrupt)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var m Manifest
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("manifest: data after the JSON object: %w", ErrCorrupt)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// digestState computes the whole-volume digest: SHA-256 over a header
// (FORMAT.md, "Volume digest") and then, for every chunk in order, the
// SHA-256 of its plaintext ("leaf"). A zero chunk's leaf is the SHA-256 of
// that many zero bytes, so the digest is that of the plaintext whatever
// was detected as zero.
type digestState struct {
	h         interface{ Write([]byte) (int, error) }
	sum       func() []byte
	zeroLeaf  ChunkID
	chunkSize int
	size      int64
}

func newDigest(size int64, chunkSize int) *digestState {
	h := sha256.New()
	h.Write([]byte("strata volume digest v1\x00"))
	h.Write(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(size)), uint64(chunkSize)))
	return &digestState{h: h, sum: func() []byte { return h.Sum(nil) }, zeroLeaf: sha256.Sum256(make([]byte, chunkSize)), chunkSize: chunkSize, size: size}
}

// add adds the leaf of chunk c (zero ChunkID: a zero chunk).
func (d *digestState) add(c int64, leaf ChunkID) {
	if leaf.IsZero() {
		if n := min(int64(d.chunkSize), d.size-c*int64(d.chunkSize)); n < int64(d.chunkSize) {
			leaf = sha256.Sum256(make([]byte, n))
		} else {
			leaf = d.zeroLeaf
		}
	}
	d.h.Write(leaf[:])
}

func (d *digestState) hex() string { return hex.EncodeToString(d.sum()) }

// VolumeDigest computes the whole-volume digest (FORMAT.md, "Volume
// digest") of src as a backup with chunks of chunkSize would record it:
// equal to a manifest's Digest exactly when src holds that backup's data.
// It reads all of src.
func VolumeDigest(ctx context.Context, src Source, chunkSize int) (string, error) {
	if chunkSize <= 0 || digestBuf%chunkSize != 0 {
		return "", fmt.Errorf("volume digest: chunk size %d: %w", chunkSize, ErrInvalid)
	}
	size := src.Size()
	d := newDigest(size, chunkSize)
	buf := make([]byte, digestBuf)
	for off := int64(0); off < size; off += digestBuf {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		p := buf[:min(int64(len(buf)), size-off)]
		if n, err := src.ReadAt(ctx, p, off); err != nil && !(errors.Is(err, io.EOF) && n == len(p)) {
			return "", fmt.Errorf("volume digest: read at %d: %w", off, err)
		}
		for i := 0; i < len(p); i += chunkSize {
			d.add((off+int64(i))/int64(chunkSize), sha256.Sum256(p[i:min(i+chunkSize, len(p))]))
		}
	}
	return d.hex(), nil
}

// digestBuf is how much VolumeDigest reads at a time.
const digestBuf = 4 << 20
