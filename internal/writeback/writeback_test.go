package writeback

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Writer writes what it is given from offset 0, whatever the file's own
// offset, in pieces of any size around Chunk, and keeps its hint offsets
// in step; a failing write comes back through Wrap.
func TestWriter(t *testing.T) {
	t.Parallel()
	data := make([]byte, 3*Chunk+12345)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, piece := range []int{1000, Chunk - 1, Chunk, 2*Chunk + 1, len(data)} {
		path := filepath.Join(t.TempDir(), "f")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(999, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		w := &Writer{F: f}
		for off := 0; off < len(data); off += piece {
			if _, err := w.Write(data[off:min(off+piece, len(data))]); err != nil {
				t.Fatalf("piece %d: %v", piece, err)
			}
		}
		if w.started > w.off || w.off-w.started >= Chunk || w.off != int64(len(data)) {
			t.Fatalf("piece %d: wrote %d, writeback started up to %d", piece, w.off, w.started)
		}
		_ = f.Close()
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("piece %d: file of %d bytes differs, %v", piece, len(got), err)
		}
	}

	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(ro, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wrapped := errors.New("wrapped")
	w := &Writer{F: f, Wrap: func(err error) error { return errors.Join(wrapped, err) }}
	if _, err := w.Write([]byte("x")); !errors.Is(err, wrapped) {
		t.Fatalf("write to a read-only file: %v, want it wrapped", err)
	}
}

// Start on a regular file works, and on a pipe (ESPIPE) is no error.
func TestStart(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 1<<16)); err != nil {
		t.Fatal(err)
	}
	if err := Start(f, 0, 1<<16); err != nil {
		t.Fatalf("regular file: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := Start(w, 0, 10); err != nil {
		t.Fatalf("pipe: %v", err)
	}
	_ = f.Close()
	if err := Start(f, 0, 10); err == nil {
		t.Fatal("closed file: no error")
	}
}
