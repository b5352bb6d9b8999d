package snapshot

import (
	"bytes"
	"errors"
	"testing"
)

func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Create(ctx, "vol-a", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{'a'}, 10000)
	if _, err := v.WriteAt(a, 100); err != nil {
		t.Fatal(err)
	}
	if err := v.Snapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	b := bytes.Repeat([]byte{'b'}, 5000)
	if _, err := v.WriteAt(b, 2000); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(8192, 4096); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want[100:], a)
	snapWant := append([]byte(nil), want...)
	copy(want[2000:], b)
	clear(want[8192 : 8192+4096])
	got := make([]byte, 1<<20)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("head mismatch")
	}
	vw, err := v.OpenSnapshot(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vw.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, snapWant) {
		t.Fatal("snapshot mismatch")
	}
	vw.Close()
	if err := v.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("head mismatch after merge")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "../x", 4096); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
	s.Close()
	s, err = OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err = s.Open(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("head mismatch after reopen")
	}
	t.Log(v.Extents(ctx, 0, 1<<20))
}
