package snapshot

import (
	"bytes"
	"testing"
)

// regroup drops a head region's page cache once, before the first
// whole-region write after small writes brought blocks into it and a
// flush made them clean — never a region the head got in large writes,
// never while the region is dirty — and the data reads back as written.
func TestRegroup(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Create(ctx, "v", 4*regroupSize)
	if err != nil {
		t.Fatal(err)
	}
	region := func(c byte) []byte { return bytes.Repeat([]byte{c}, regroupSize) }
	write := func(p []byte, off int64) {
		t.Helper()
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	state := func(i uint64) (scattered, regrouped bool) {
		v.head.regroupMu.Lock()
		defer v.head.regroupMu.Unlock()
		return v.head.scattered.has(i), v.head.regrouped.has(i)
	}
	// Region 0 in one large write, region 1 in small ones (one across the
	// boundary to region 2).
	write(region('a'), 0)
	write(bytes.Repeat([]byte{'s'}, BlockSize), regroupSize+5*BlockSize)
	write(bytes.Repeat([]byte{'s'}, 2*BlockSize), 2*regroupSize-BlockSize)
	for i, want := range []bool{false, true, true, false} {
		if sc, _ := state(uint64(i)); sc != want {
			t.Fatalf("region %d scattered %v, want %v", i, sc, want)
		}
	}
	// Dirty: left alone.
	write(region('b'), regroupSize)
	if _, rg := state(1); rg {
		t.Fatal("a dirty region was regrouped")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// A flush in flight (its pages may not be synced yet): left alone.
	v.flushMu.Lock()
	write(region('b'), regroupSize)
	v.flushMu.Unlock()
	if _, rg := state(1); rg {
		t.Fatal("a region was regrouped while a flush was in flight")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	write(region('c'), 0)
	write(region('d'), regroupSize)
	write(region('e'), 2*regroupSize)
	for i, want := range []bool{false, true, true, false} {
		if _, rg := state(uint64(i)); rg != want {
			t.Fatalf("region %d regrouped %v, want %v", i, rg, want)
		}
	}
	got := make([]byte, 3*regroupSize)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(region('c'), region('d')...), region('e')...)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs after regrouped writes")
	}
	// A new head starts over.
	if err := v.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if sc, rg := state(1); sc || rg {
		t.Fatalf("new head: region 1 scattered %v regrouped %v", sc, rg)
	}
}
