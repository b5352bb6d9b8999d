package backupd

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestManifestTagsBounded: a manifest whose tags object is far larger than
// 64 tags can be is refused before a map of it is built. Before, a hostile
// manifest near the size limit (about 537 MiB) made every List, Prune, GC
// and Verify build a map of tens of millions of entries first.
func TestManifestTagsBounded(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"format":1,"volume":"v","id":"0123456789abcdef0123456789abcdef","created":"2026-01-01T00:00:00Z","size":8192,"chunk_size":8192,"page_chunks":256,"encrypted":false,"digest":"","pages":[],"tags":{`)
	const n = 200000
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `"t%07d":""`, i)
	}
	sb.WriteString(`},"stats":{}}`)
	b := []byte(sb.String())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeManifest(b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("DecodeManifest with %d tags: %v, want ErrCorrupt", n, err)
	}
	// The JSON decoder's buffer holds the object (growing by doubling:
	// about 3x its size); the map of 200,000 tags took 12x.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 5*uint64(len(b)) {
		t.Errorf("DecodeManifest allocated %d bytes for a %d-byte manifest it refuses", alloc, len(b))
	}
}
