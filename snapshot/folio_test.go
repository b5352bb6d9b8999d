package snapshot

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// largestFolio returns the largest page-cache folio, in pages, backing the
// first n bytes of f, read from /proc/self/pagemap and /proc/kpageflags
// (root only). ok is false when the kernel does not tell (not root, or
// PFNs hidden).
func largestFolio(t *testing.T, f *os.File, n int) (pages int, ok bool) {
	t.Helper()
	const kpfCompoundTail = 1 << 16 // a page inside a folio, not its first
	m, err := unix.Mmap(int(f.Fd()), 0, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, false
	}
	defer pagemap.Close()
	kflags, err := os.Open("/proc/kpageflags")
	if err != nil {
		return 0, false
	}
	defer kflags.Close()
	page := os.Getpagesize()
	base := uint64(uintptr(unsafe.Pointer(&m[0]))) / uint64(page)
	var e [8]byte
	run := 0
	var sink byte
	for i := 0; i < n/page; i++ {
		sink += m[i*page] // map the page
		if _, err := pagemap.ReadAt(e[:], int64(base+uint64(i))*8); err != nil {
			return 0, false
		}
		pm := binary.LittleEndian.Uint64(e[:])
		pfn := pm & (1<<55 - 1)
		if pm&(1<<63) == 0 || pfn == 0 {
			return 0, false
		}
		if _, err := kflags.ReadAt(e[:], int64(pfn)*8); err != nil {
			return 0, false
		}
		if binary.LittleEndian.Uint64(e[:])&kpfCompoundTail != 0 {
			run++
		} else {
			run = 1
		}
		pages = max(pages, run)
	}
	runtime.KeepAlive(sink)
	return pages, true
}

// A large write into a range new to the head goes into the page cache in
// folios of at most freshPiece (see freshPiece for why), where the same
// write into a plain file creates larger ones. Checked on the kernel's own page flags; skipped
// where the kernel makes no large folios for the filesystem under the
// test's temporary directory, or does not show page flags.
func TestHeadWritesSmallFolios(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := bytes.Repeat([]byte{0x5a}, 4<<20)
	// Control: a plain file written whole.
	f, err := os.Create(filepath.Join(dir, "control"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	control, ok := largestFolio(t, f, len(p))
	if !ok {
		t.Skip("the kernel does not show page-cache folios here (needs root and /proc/kpageflags)")
	}
	if control*os.Getpagesize() <= freshPiece {
		t.Skipf("a 4 MiB write made folios of at most %d pages here: no large folios on this filesystem", control)
	}

	s, err := OpenStore(filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		name   string
		before func(v *Volume) error
	}{
		{"new head", func(*Volume) error { return nil }},
		// Punched: no data and no page cache, like a new range.
		{"after trim", func(v *Volume) error { return v.Trim(0, int64(len(p))) }},
		{"after zero", func(v *Volume) error { return v.Zero(0, int64(len(p))) }},
	} {
		v, err := s.Create(t.Context(), strings.ReplaceAll(tc.name, " ", "-"), int64(len(p)))
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.before(v); err != nil {
			t.Fatal(err)
		}
		if _, err := v.WriteAt(p, 0); err != nil {
			t.Fatal(err)
		}
		got, ok := largestFolio(t, v.head.data, len(p))
		if !ok {
			t.Fatal("page flags readable for one file but not for the head")
		}
		if got*os.Getpagesize() > freshPiece {
			t.Errorf("%s: the head holds a folio of %d pages after a 4 MiB write, want at most %d (a plain file: %d)", tc.name, got, freshPiece/os.Getpagesize(), control)
		}
		t.Logf("%s: largest folio %d pages (a plain file written whole: %d)", tc.name, got, control)
	}
}
