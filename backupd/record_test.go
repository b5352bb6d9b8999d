package backupd

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestLooksIncompressible(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(81, 82))
	tail := RandomData(rng, ChunkSize)
	clear(tail[ChunkSize*7/8:]) // 1 KiB of zeros: zstd saves ~12%
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog. "), ChunkSize/45+1)[:ChunkSize]
	for _, tc := range []struct {
		name string
		p    []byte
		want bool
	}{
		{name: "random", p: RandomData(rng, ChunkSize), want: true},
		{name: "random-short", p: RandomData(rng, 4096), want: false}, // too few samples: try zstd
		{name: "zero-tail", p: tail},
		{name: "text", p: text},
	} {
		if got := looksIncompressible(tc.p); got != tc.want {
			t.Errorf("%s: looksIncompressible = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Random chunks are never compressed: a false "compressible" only
	// costs time, but it should be rare.
	misses := 0
	for range 2000 {
		if !looksIncompressible(RandomData(rng, ChunkSize)) {
			misses++
		}
	}
	if misses > 0 {
		t.Errorf("%d of 2000 random chunks looked compressible", misses)
	}
}

func TestRecordLeafID(t *testing.T) {
	t.Parallel()
	k := testKey(t)
	p := RandomData(rand.New(rand.NewPCG(83, 84)), ChunkSize)
	id, leaf := chunkIDs(k, p)
	if id != leafID(k, leaf) || id == legacyID(k, p) {
		t.Fatal("encrypted chunk id is not keyed from the leaf")
	}
	rec := encodeRecord(nil, k, id, p)
	if rec[5] != flagEncrypted|flagLeafID {
		t.Fatalf("flags %#x", rec[5])
	}
	got, gotLeaf, err := decodeRecordScratch(rec, k, id, ChunkSize, &decodeScratch{})
	if err != nil || !bytes.Equal(got, p) || gotLeaf != leaf {
		t.Fatalf("decode: %v", err)
	}
	// The flag is authenticated: cleared, the record does not open.
	bad := bytes.Clone(rec)
	bad[5] &^= flagLeafID
	if _, err := decodeRecord(bad, k, id, ChunkSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("record with the flag cleared: %v", err)
	}
	// Unencrypted records never carry it.
	plain := encodeRecord(nil, nil, chunkID(nil, p), p)
	plain[5] |= flagLeafID
	if _, err := decodeRecord(plain, nil, chunkID(nil, p), ChunkSize); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unencrypted record with the leaf-id flag: %v", err)
	}
}
