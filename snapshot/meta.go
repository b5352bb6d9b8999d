package snapshot

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
)

const (
	// BlockSize is the copy-on-write unit and the alignment of volume sizes.
	BlockSize  = 4096
	blockShift = 12

	// MaxSize is the largest volume size: 4 PiB.
	MaxSize = int64(1) << 52

	// metaFormat is the version of the volume metadata file.
	metaFormat = 1

	// maxMetaSize bounds a volume metadata file.
	maxMetaSize = 4 << 20
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidName reports whether s is a valid volume or snapshot name:
// [a-z0-9][a-z0-9._-]{0,62}. Such a name can never escape a directory.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func checkName(kind, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%s name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", kind, s, ErrInvalidName)
	}
	return nil
}

func checkSize(size int64) error {
	if size <= 0 || size%BlockSize != 0 || size > MaxSize {
		return fmt.Errorf("size %d: must be a positive multiple of %d up to %d: %w", size, BlockSize, MaxSize, ErrInvalidArgument)
	}
	return nil
}

// layerID names a layer in the store's layer pool.
type layerID uint64

func (id layerID) String() string { return fmt.Sprintf("%016x", uint64(id)) }

func parseLayerID(s string) (layerID, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("layer id %q: want 16 hex digits", s)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return 0, fmt.Errorf("layer id %q: %w", s, err)
	}
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("layer id %q: %w", s, err)
	}
	if u == 0 {
		return 0, fmt.Errorf("layer id %q: zero is reserved", s)
	}
	return layerID(u), nil
}

// volumeMeta is the content of volumes/<name>.meta. See FORMAT.md.
type volumeMeta struct {
	Format  int         `json:"format"`
	Name    string      `json:"name"`
	Size    int64       `json:"size"`
	Created time.Time   `json:"created"`
	Layers  []layerMeta `json:"layers"`
}

// layerMeta is one entry of a volume's chain, bottom first. Every entry but
// the last is sealed; the last is the writable head.
type layerMeta struct {
	ID string `json:"id"`
	// Snapshot is the snapshot name of a sealed layer; empty for the head and
	// for anonymous sealed layers a clone inherited.
	Snapshot string `json:"snapshot,omitempty"`
	// Created is when the layer was sealed (snapshot time), or created for the head.
	Created time.Time `json:"created"`
	// Size is the volume size when the layer was sealed; 0 for the head.
	Size int64 `json:"size,omitempty"`
	// LogSize is, for a sealed layer, the length of its log that was synced
	// when this metadata was written: damage before it is corruption,
	// damage after it the torn tail of an interrupted merge. 0 for the head.
	LogSize int64 `json:"log_size,omitempty"`

	id layerID
}

func (m *volumeMeta) head() *layerMeta { return &m.Layers[len(m.Layers)-1] }

func (m *volumeMeta) clone() *volumeMeta {
	c := *m
	c.Layers = append([]layerMeta(nil), m.Layers...)
	return &c
}

// findSnapshot returns the chain position of the named snapshot, or -1.
func (m *volumeMeta) findSnapshot(name string) int {
	for i := range m.Layers[:len(m.Layers)-1] {
		if m.Layers[i].Snapshot == name {
			return i
		}
	}
	return -1
}

// validate checks every invariant of a decoded or about-to-be-written meta
// and fills in the parsed layer ids.
func (m *volumeMeta) validate() error {
	if m.Format != metaFormat {
		return fmt.Errorf("format %d (this build reads %d): %w", m.Format, metaFormat, ErrUnsupportedFormat)
	}
	if err := checkName("volume", m.Name); err != nil {
		return err
	}
	if err := checkSize(m.Size); err != nil {
		return fmt.Errorf("volume size: %w", err)
	}
	if len(m.Layers) == 0 {
		return fmt.Errorf("no layers: %w", ErrCorrupt)
	}
	if len(m.Layers) > 65536 {
		return fmt.Errorf("%d layers: too many: %w", len(m.Layers), ErrCorrupt)
	}
	ids := make(map[layerID]bool, len(m.Layers))
	snaps := make(map[string]bool)
	var prevSize int64
	for i := range m.Layers {
		l := &m.Layers[i]
		id, err := parseLayerID(l.ID)
		if err != nil {
			return fmt.Errorf("layer %d: %v: %w", i, err, ErrCorrupt)
		}
		if ids[id] {
			return fmt.Errorf("layer %d: id %s appears twice: %w", i, l.ID, ErrCorrupt)
		}
		ids[id] = true
		l.id = id
		if i == len(m.Layers)-1 {
			if l.Snapshot != "" || l.Size != 0 || l.LogSize != 0 {
				return fmt.Errorf("head layer %s: has snapshot name, size or log size: %w", l.ID, ErrCorrupt)
			}
			if m.Size < prevSize {
				return fmt.Errorf("volume size %d smaller than its last snapshot (%d): %w", m.Size, prevSize, ErrCorrupt)
			}
			continue
		}
		if err := checkSize(l.Size); err != nil {
			return fmt.Errorf("layer %s size: %v: %w", l.ID, err, ErrCorrupt)
		}
		if l.LogSize < logHeaderSize {
			return fmt.Errorf("layer %s: log size %d, want at least %d: %w", l.ID, l.LogSize, logHeaderSize, ErrCorrupt)
		}
		if l.Size < prevSize {
			return fmt.Errorf("layer %s: size %d smaller than the layer below (%d): %w", l.ID, l.Size, prevSize, ErrCorrupt)
		}
		prevSize = l.Size
		if l.Snapshot != "" {
			if err := checkName("snapshot", l.Snapshot); err != nil {
				return fmt.Errorf("layer %s: %w", l.ID, err)
			}
			if snaps[l.Snapshot] {
				return fmt.Errorf("snapshot %q appears twice: %w", l.Snapshot, ErrCorrupt)
			}
			snaps[l.Snapshot] = true
		}
	}
	return nil
}

var metaSumPrefix = []byte("xxh64=")

// encodeMeta renders m as one line of JSON followed by a line holding the
// xxhash64 of that JSON line (newline included).
func encodeMeta(m *volumeMeta) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode volume meta: %w", err)
	}
	js = append(js, '\n')
	sum := xxhash.Sum64(js)
	return fmt.Appendf(js, "%s%016x\n", metaSumPrefix, sum), nil
}

// decodeMeta parses and validates a volume metadata file.
func decodeMeta(b []byte) (*volumeMeta, error) {
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("%d bytes, larger than %d: %w", len(b), maxMetaSize, ErrCorrupt)
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return nil, fmt.Errorf("no checksum line (truncated?): %w", ErrCorrupt)
	}
	js, tail := b[:nl+1], b[nl+1:]
	want := len(metaSumPrefix) + 16 + 1
	if len(tail) != want || !bytes.HasPrefix(tail, metaSumPrefix) || tail[want-1] != '\n' {
		return nil, fmt.Errorf("malformed checksum line: %w", ErrCorrupt)
	}
	sum, err := strconv.ParseUint(string(tail[len(metaSumPrefix):want-1]), 16, 64)
	if err != nil {
		return nil, fmt.Errorf("malformed checksum: %v: %w", err, ErrCorrupt)
	}
	if got := xxhash.Sum64(js); got != sum {
		return nil, fmt.Errorf("checksum mismatch (stored %016x, computed %016x): %w", sum, got, ErrCorrupt)
	}
	var m volumeMeta
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("json: %v: %w", err, ErrCorrupt)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("json: data after the object: %w", ErrCorrupt)
	}
	if err := m.validate(); err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupportedFormat) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return &m, nil
}
