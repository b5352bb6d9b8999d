package backupd

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Every decoder of on-target data gets hostile input: it must return an
// error wrapping ErrCorrupt (or ErrKey), never panic, and accept only what
// its encoder could have written.

func FuzzDecodeRecord(f *testing.F) {
	for _, p := range [][]byte{[]byte("hello"), make([]byte, 4096), bytes.Repeat([]byte("ab"), 3000)} {
		id := chunkID(nil, p)
		f.Add(encodeRecord(nil, nil, id, p), id[:], false)
	}
	k, _ := NewKey(bytes.Repeat([]byte{3}, KeySize))
	p := []byte("secret data")
	id := chunkID(k, p)
	f.Add(encodeRecord(nil, k, id, p), id[:], true)
	f.Fuzz(func(t *testing.T, rec, idb []byte, encrypted bool) {
		var id ChunkID
		copy(id[:], idb)
		var key *Key
		if encrypted {
			key = k
		}
		p, err := decodeRecord(rec, key, id, MaxChunkSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrKey) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrKey", err)
			}
			return
		}
		if chunkID(key, p) != id {
			t.Fatalf("accepted a record whose content does not hash to its id")
		}
	})
}

func FuzzDecodeIndex(f *testing.F) {
	var pack ChunkID
	pack[0] = 1
	f.Add(encodeIndex(pack, []indexEntry{{ID: ChunkID{2}, Offset: 0, Length: 100}, {ID: ChunkID{3}, Offset: 100, Length: 50}}), true)
	f.Add(encodeIndex(pack, nil), false)
	f.Add(encodeIndex(pack, []indexEntry{{ID: ChunkID{2}, Offset: 0, Length: 100}, {ID: ChunkID{3}, Offset: 99, Length: 50}}), true)
	f.Add(encodeIndex(pack, []indexEntry{{ID: ChunkID{}, Offset: 0, Length: 100}}), true)
	f.Fuzz(func(t *testing.T, b []byte, fixSum bool) {
		// With fixSum the trailer is made to match, so that mutations
		// reach the checks behind the checksum.
		if fixSum && len(b) >= 8 {
			b = binary.LittleEndian.AppendUint64(slices.Clone(b[:len(b)-8]), xxhash.Sum64(b[:len(b)-8]))
		}
		es, err := decodeIndex(b, pack)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(encodeIndex(pack, es), b) {
			t.Fatalf("decoded index does not encode back to the input")
		}
		var end uint64
		for i, e := range es {
			if e.ID.IsZero() || uint64(e.Offset) < end || e.Length < recordHeaderSize {
				t.Fatalf("accepted entry %d: %+v after end %d", i, e, end)
			}
			end = uint64(e.Offset) + uint64(e.Length)
		}
	})
}

func FuzzDecodePage(f *testing.F) {
	k, _ := NewKey(bytes.Repeat([]byte{4}, KeySize))
	ids := []ChunkID{{1}, {}, {3}}
	obj, _ := encodePage(page{IDs: ids}, nil)
	f.Add(obj, 3, false)
	obj, _ = encodePage(page{IDs: ids, Leaves: []ChunkID{{9}, {}, {8}}}, k)
	f.Add(obj, 3, true)
	// A full page as written now (PageChunks entries).
	full := make([]ChunkID, PageChunks)
	for i := range full {
		full[i][0], full[i][1] = byte(i), byte(i>>8)+1
	}
	obj, _ = encodePage(page{IDs: full, Leaves: full}, k)
	f.Add(obj, PageChunks, true)
	f.Fuzz(func(t *testing.T, b []byte, want int, encrypted bool) {
		var key *Key
		if encrypted {
			key = k
		}
		// The id is the object's hash, so the fuzzer reaches the decoder
		// proper; decodePage also checks it.
		_, id := sha256Object(b)
		p, err := decodePage(b, id, key, want)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrKey) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrKey", err)
			}
			return
		}
		if len(p.IDs) != want || (p.Leaves != nil) != encrypted {
			t.Fatalf("accepted a page of %d entries (leaves %v), want %d", len(p.IDs), p.Leaves != nil, want)
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	m := &Manifest{Format: manifestFormat, Version: 1, Volume: "vol-a", ID: "0123456789abcdef0123456789abcdef", Snapshot: "s1",
		Created: time.Unix(1700000000, 0).UTC(), Size: 3 << 20, ChunkSize: ChunkSize, PageChunks: 256, // the first writers' pages
		Digest: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		Pages:  []string{"aa112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", "bb112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"},
		Tags:   map[string]string{"system": "s-1"}}
	b, err := EncodeManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	// Pages of PageChunks (1024) entries, as written now: one for 3 MiB.
	m.PageChunks, m.Pages = PageChunks, m.Pages[:1]
	b2, err := EncodeManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b2)
	// An encrypted one with its MAC, in another time zone.
	k := testKey(f)
	m.Encrypted, m.KeyID, m.Created = true, k.ID(), m.Created.In(time.FixedZone("x", -5*3600))
	m.MAC = k.manifestMAC(m)
	b3, err := EncodeManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b3)
	f.Add([]byte(`{}`))
	f.Add(append(bytes.Clone(b), []byte(` {}`)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded manifest does not validate: %v", err)
		}
		// The MAC covers the fields, not their JSON: written again by
		// this code, the manifest has the same MAC.
		again, err := EncodeManifest(m)
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		m2, err := DecodeManifest(again)
		if err != nil {
			t.Fatalf("a manifest written again does not decode: %v", err)
		}
		if k.manifestMAC(m2) != k.manifestMAC(m) {
			t.Fatal("the MAC changed with the manifest's encoding")
		}
		if int64(len(m.Pages)) != (m.Chunks()+int64(m.PageChunks)-1)/int64(m.PageChunks) {
			t.Fatalf("page count %d for %d chunks", len(m.Pages), m.Chunks())
		}
	})
}

// TestManifestRejects lists manifests that must not load.
func TestManifestRejects(t *testing.T) {
	t.Parallel()
	good := func() *Manifest {
		return &Manifest{Format: manifestFormat, Version: 1, Volume: "vol-a", ID: "0123456789abcdef0123456789abcdef", Snapshot: "s1",
			Created: time.Unix(1700000000, 0).UTC(), Size: 2 << 20, ChunkSize: ChunkSize, PageChunks: PageChunks,
			Digest: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
			Pages:  []string{"aa112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}
	}
	if _, err := EncodeManifest(good()); err != nil {
		t.Fatalf("the good manifest: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		raw    string
	}{
		{name: "bad-volume", mutate: func(m *Manifest) { m.Volume = "../etc" }},
		{name: "upper-hex-id", mutate: func(m *Manifest) { m.ID = "0123456789ABCDEF0123456789abcdef" }},
		{name: "short-digest", mutate: func(m *Manifest) { m.Digest = "0011" }},
		{name: "too-many-pages", mutate: func(m *Manifest) { m.Pages = append(m.Pages, m.Pages[0]) }},
		{name: "no-pages", mutate: func(m *Manifest) { m.Pages = nil }},
		{name: "size-not-4k", mutate: func(m *Manifest) { m.Size = 4097 }},
		{name: "size-negative", mutate: func(m *Manifest) { m.Size = -4096 }},
		{name: "size-huge", mutate: func(m *Manifest) { m.Size = 1 << 60 }},
		{name: "chunk-size-odd", mutate: func(m *Manifest) { m.ChunkSize = 12288 }},
		{name: "page-chunks-zero", mutate: func(m *Manifest) { m.PageChunks = 0 }},
		{name: "encrypted-without-key-id", mutate: func(m *Manifest) { m.Encrypted = true }},
		{name: "own-parent", mutate: func(m *Manifest) { m.Parent = m.ID }},
		{name: "mac-unencrypted", mutate: func(m *Manifest) { m.MAC = strings.Repeat("ab", 32) }},
		{name: "mac-not-hex", mutate: func(m *Manifest) { m.Encrypted, m.KeyID, m.MAC = true, "0011223344556677", "xyz" }},
		{name: "no-time", mutate: func(m *Manifest) { m.Created = time.Time{} }},
		{name: "wrong-format", mutate: func(m *Manifest) { m.Format = "restic" }},
		{name: "unknown-field", raw: `{"format":"strata-volume-backup","version":1,"extra":1}`},
		{name: "trailing-data", raw: "GOOD {}"},
		{name: "not-json", raw: "\x00\x01"},
		{name: "array", raw: "[]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var b []byte
			if tc.mutate != nil {
				m := good()
				tc.mutate(m)
				b = marshalJSON(m)
			} else {
				gb, _ := EncodeManifest(good())
				b = bytes.ReplaceAll([]byte(tc.raw), []byte("GOOD"), gb)
			}
			if _, err := DecodeManifest(b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeManifest = %v, want ErrCorrupt", err)
			}
		})
	}
}

func sha256Object(b []byte) ([]byte, ChunkID) {
	return b, ChunkID(sha256.Sum256(b))
}

// TestRecordDecompressionBounded: a compressed record whose frame
// decompresses to far more than its header's plaintext length is refused
// without decompressing it whole. Before, the decoder grew its output to
// the frame's size (up to 4x MaxChunkSize) before the length check.
func TestRecordDecompressionBounded(t *testing.T) {
	big := make([]byte, 2*MaxChunkSize)
	rec := encodeRecord(nil, nil, chunkID(nil, big), big)
	if rec[5]&flagCompressed == 0 {
		t.Fatal("a record of zeros was not compressed")
	}
	binary.LittleEndian.PutUint32(rec[8:], 100) // the header claims 100 bytes
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := decodeRecord(rec, nil, chunkID(nil, big[:100]), MaxChunkSize)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decodeRecord of a frame larger than its header says: %v, want ErrCorrupt", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > MaxChunkSize/2 {
		t.Errorf("decodeRecord allocated %d bytes refusing a record that claims 100", alloc)
	}
}
