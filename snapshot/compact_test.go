package snapshot

import (
	"bytes"
	"testing"
)

// TestCompactHeadLog overwrites the same blocks with a flush after each
// write until the head's log is compacted, then checks content, snapshot
// scrub and reopen.
func TestCompactHeadLog(t *testing.T) {
	old := compactMinSize
	compactMinSize = 64 << 10
	t.Cleanup(func() { compactMinSize = old })
	ctx := t.Context()
	dir := t.TempDir()
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, "c", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16*BlockSize)
	maxLog, compactions := int64(0), 0
	for i := range 600 {
		for j := range p {
			p[j] = byte(i + j/BlockSize)
		}
		if _, err := v.WriteAt(p, 0); err != nil {
			t.Fatal(err)
		}
		if err := v.Trim(32*BlockSize, 4*BlockSize); err != nil {
			t.Fatal(err)
		}
		before := v.head.logSize
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if v.head.logSize < before {
			compactions++
		}
		maxLog = max(maxLog, v.head.logSize)
	}
	if compactions == 0 {
		t.Fatalf("log never compacted (largest %d bytes)", maxLog)
	}
	if maxLog > 2*compactMinSize {
		t.Fatalf("log grew to %d bytes, limit %d", maxLog, compactMinSize)
	}
	t.Logf("%d compactions, largest log %d bytes", compactions, maxLog)
	if err := v.Snapshot(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Scrub(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err = s.Open(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("content changed across compaction and reopen")
	}
	if _, err := v.Scrub(ctx); err != nil {
		t.Fatal(err)
	}
}
