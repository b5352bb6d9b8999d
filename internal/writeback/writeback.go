package writeback

import (
	"io"
	"os"
)

// Chunk is how much Writer writes before it starts writeback of it: large
// enough that the hint costs nothing next to the copy, small enough that
// the disk starts early.
const Chunk = 1 << 20

// Writer writes a file sequentially from offset 0 (with WriteAt, so the
// file's own offset does not matter), starting writeback of each Chunk
// written. Wrap, if set, wraps the errors of the file's writes and of the
// hint (a target gives them its error classes).
type Writer struct {
	F    *os.File
	Wrap func(error) error

	off     int64 // bytes written
	started int64 // bytes whose writeback has been started
}

var _ io.Writer = (*Writer)(nil)

// Write writes p in pieces of at most Chunk, so that a large write starts
// writeback of its first pieces while it copies the rest.
func (w *Writer) Write(p []byte) (int, error) {
	var done int
	for done < len(p) {
		piece := p[done:min(len(p), done+Chunk)]
		n, err := w.F.WriteAt(piece, w.off)
		done += n
		if err != nil {
			w.off += int64(n)
			return done, w.wrap(err)
		}
		if err := w.Wrote(w.off + int64(n)); err != nil {
			return done, err
		}
	}
	return done, nil
}

// Wrote records that the file now holds off bytes (written by the caller
// some other way, such as splice(2)), starting writeback of each whole
// Chunk since the last start.
func (w *Writer) Wrote(off int64) error {
	w.off = off
	if w.off-w.started >= Chunk {
		if err := Start(w.F, w.started, w.off-w.started); err != nil {
			return w.wrap(err)
		}
		w.started = w.off
	}
	return nil
}

func (w *Writer) wrap(err error) error {
	if w.Wrap != nil {
		return w.Wrap(err)
	}
	return err
}
