package backupd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-block/strata/plugins"

	"github.com/strata-block/strata/internal/atomicfile"
	"github.com/strata-block/strata/internal/writeback"
)

// Destination is what Restore writes: a volume (VolumeDestination
// adapts a blockdev.Volume) or a file (FileDestination). Flush makes the
// writes before it durable.
type Destination interface {
	Size() int64
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	Flush(ctx context.Context) error
}

// Zeroer is implemented by destinations that can make a range read as
// zeros without writing them (VolumeDestination trims). Restore uses it
// for zero chunks when the destination is not known to be zero.
type Zeroer interface {
	Zero(ctx context.Context, off, length int64) error
}

// RestoreOptions tune a restore.
type RestoreOptions struct {
	// DestZeroed says the destination reads as zeros (a new volume): zero
	// chunks are not written. Otherwise they are written as zeros.
	DestZeroed bool
	// StatePath, if set, names a small file recording how many map pages
	// are restored and flushed; a rerun with the same path and manifest
	// does not fetch them again: it reads their chunks back from a
	// destination that implements DestinationReader and restores only
	// those that do not hold what the map says (written to since, or by
	// another restore), so a rerun is bit-exact whatever happened to the
	// destination in between. It is removed when the restore succeeds. A
	// window in which SkipDamaged skipped a chunk is not recorded, nor any
	// after it: a rerun restores it again. Without it a rerun rewrites
	// everything, which is also correct (restore is idempotent).
	StatePath string
	// SkipDamaged restores past chunks that fail their checks or whose
	// pack is missing, leaving their ranges unwritten and
	// listing them in RestoreResult.Damaged; Restore still returns an
	// error wrapping ErrCorrupt at the end. A read that fails otherwise
	// (the target does not answer) still stops the restore.
	SkipDamaged bool
	// Parallel is the number of ranged Gets in flight (default 4).
	Parallel int
	// Progress, if set, receives progress events.
	Progress ProgressFunc
}

// DamagedRange is a range of the volume a restore could not write.
type DamagedRange struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Chunk  string `json:"chunk"`
	Err    string `json:"error"`
}

// RestoreResult describes a finished restore.
type RestoreResult struct {
	Volume       string
	ID           string
	Digest       string
	BytesWritten int64
	BytesFetched int64
	// Resumed is the number of map pages the state file recorded as
	// restored: read back and checked instead of fetched.
	Resumed int
	// Repaired is the number of chunks of those pages that did not hold
	// what the map says and were restored again.
	Repaired int64
	Damaged  []DamagedRange
}

// DestinationReader is a Destination that reads back what it holds
// (VolumeDestination, FileDestination): a restore resumed from its state
// file checks the chunks it restored before instead of trusting them.
type DestinationReader interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
}

type restoreState struct {
	Manifest  string `json:"manifest"`
	Digest    string `json:"digest"`
	PagesDone int    `json:"pages_done"`
}

// restoreWindowChunks is the number of chunks whose map pages are fetched
// together (32 MiB of volume: 16 pages of 256 chunks, 4 of 1024), so
// chunks of one pack are read with few large Gets.
const restoreWindowChunks = 4096

// restoreWindows is the number of windows restored at once, so that the
// last ranges of one (a range is read, checked and written by one
// goroutine) do not leave a core idle.
const restoreWindows = 4

// unfinishedWindows is the number of restored windows that may wait to
// be finished (flushed, recorded in the state file) while the next are
// restored: with the one being finished, 288 MiB of volume.
const unfinishedWindows = 8

// Restore writes backup manifestKey to dst, verifying every chunk (xxhash
// and id) and the whole-volume digest. dst must be at least the backup's
// size; bytes past it are not touched.
func (r *Repository) Restore(ctx context.Context, manifestKey string, dst Destination, opts RestoreOptions) (*RestoreResult, error) {
	m, err := r.LoadManifest(ctx, manifestKey)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	where := fmt.Sprintf("restore of volume %q backup %s", m.Volume, m.ID)
	k, err := r.keyFor(m)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if dst.Size() < m.Size {
		return nil, fmt.Errorf("%s: destination of %d bytes is smaller than the backup's %d: %w", where, dst.Size(), m.Size, ErrInvalid)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	res := &RestoreResult{Volume: m.Volume, ID: m.ID, Digest: m.Digest}
	start := 0
	if opts.StatePath != "" {
		if st, err := readRestoreState(opts.StatePath); err == nil && st.Manifest == manifestKey && st.Digest == m.Digest {
			start = min(st.PagesDone, len(m.Pages))
			res.Resumed = start
		}
	}
	var cnt restoreCounts
	written, fetched := &cnt.written, &cnt.fetched
	var pos int64 // bytes of the volume restored, in order (finish)
	report := func(ph Phase) {
		if opts.Progress != nil {
			opts.Progress(Progress{Op: "restore", Volume: m.Volume, Phase: ph, BytesTotal: m.Size, Position: pos,
				BytesScanned: fetched.Load(), BytesWritten: written.Load(), Time: time.Now()})
		}
	}
	report(PhaseIndex)
	idx, err := r.loadIndex(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: loading the chunk index: %w", where, err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	window := max(1, restoreWindowChunks/m.PageChunks) // pages
	pages := r.pageStream(ctx, m, k, 0, restoreWindows*window+2)
	dg := newDigest(m.Size, m.ChunkSize)
	var damaged []DamagedRange
	var dmu sync.Mutex
	// restoreWindows windows are restored at once (slots), so that one's
	// last range does not leave the Gets and the CPU idle; sem bounds the
	// Gets of all to opts.Parallel. One goroutine, the finisher, finishes
	// them in order (flushes the destination, records them in the state
	// file) while the next windows are restored: when the loop flushed
	// itself, the restore stopped at every flush, and a durable restore
	// took the disk's time after the CPU's instead of beside it. At most
	// unfinishedWindows windows wait for the finisher (and one it is
	// finishing), which bounds what one flush writes and how far the
	// state file lags. After a window fails, the finisher still finishes
	// the windows before it that were restored whole.
	sem := make(chan struct{}, opts.Parallel)
	slots := make(chan struct{}, restoreWindows)
	type windowRun struct {
		from, end int // pages
		err       error
		damaged   int // chunks skipped (SkipDamaged), under dmu
		done      chan struct{}
	}
	// stateHeld: a window had damaged chunks, so the state file stays
	// before it: a rerun must restore it again (and report the damage)
	// rather than skip it as done. The finisher's.
	stateHeld := false
	finish := func(wr *windowRun) error {
		if wr.err != nil {
			return context.Cause(ctx) // the first window's error
		}
		if fd, ok := dst.(FileDestination); ok {
			// A hint: the fsync of Flush finds less to write. Its errors
			// are the fsync's to report.
			off := m.PagesEnd(wr.from)
			_ = writeback.Start(fd.F, off, m.PagesEnd(wr.end)-off)
		}
		dmu.Lock()
		stateHeld = stateHeld || wr.damaged > 0
		dmu.Unlock()
		if opts.StatePath != "" && !stateHeld {
			// Not cancelled with the restore: a window restored whole
			// is recorded even when a later one failed meanwhile, so
			// that a rerun does not fetch it again.
			if err := dst.Flush(context.WithoutCancel(ctx)); err != nil {
				if ctx.Err() != nil {
					// A later window failed meanwhile (a damaged chunk):
					// its error, which names the chunk, not the flush's.
					return context.Cause(ctx)
				}
				return fmt.Errorf("%s: flush: %w", where, err)
			}
			if err := writeRestoreState(opts.StatePath, restoreState{Manifest: manifestKey, Digest: m.Digest, PagesDone: wr.end}); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		pos = m.PagesEnd(wr.end)
		report(PhaseRestore)
		return nil
	}
	queue := make(chan *windowRun, unfinishedWindows)
	finished := make(chan error, 1)
	go func() {
		var err error
		for wr := range queue {
			<-wr.done
			if err == nil {
				if err = finish(wr); err != nil {
					cancel(err) // ends the loop and the windows restoring
				}
			}
		}
		finished <- err
	}()
	stopped := false
	var ferr error // the finisher's, once stopped
	// stop ends the finisher once every queued window has ended, and
	// returns its error; err, if not nil, stops the restore first.
	stop := func(err error) error {
		if err != nil {
			cancel(err)
		}
		if !stopped { // the deferred call may come after another
			close(queue)
			ferr = <-finished
			stopped = true
		}
		if err != nil {
			if c := context.Cause(ctx); !errors.Is(err, c) {
				return c // the first error: the finisher's or a window's
			}
			return err
		}
		return ferr
	}
	defer stop(context.Canceled)
	for w := 0; w < len(m.Pages); w += window {
		var win []pageResult
		for range min(window, len(m.Pages)-w) {
			pr, ok := <-pages
			if !ok {
				return nil, stop(fmt.Errorf("%s: %w", where, context.Cause(ctx)))
			}
			if pr.err != nil {
				return nil, stop(fmt.Errorf("restore: %w", pr.err))
			}
			win = append(win, pr)
		}
		for _, pr := range win {
			for c := range pr.p.IDs {
				dg.add(int64(pr.i)*int64(m.PageChunks)+int64(c), pr.p.leaf(c))
			}
		}
		// A window restored before the kill is read back and checked.
		verify := w+len(win) <= start
		wr := &windowRun{from: w, end: w + len(win), done: make(chan struct{})}
		fail := func(c int64, id ChunkID, err error) error {
			off := c * int64(m.ChunkSize)
			err = fmt.Errorf("%s: chunk %s at offset %d: %w", where, id, off, err)
			if !opts.SkipDamaged {
				return err
			}
			dmu.Lock()
			damaged = append(damaged, DamagedRange{Offset: off, Length: int64(m.chunkLen(c)), Chunk: id.String(), Err: err.Error()})
			wr.damaged++
			dmu.Unlock()
			return nil
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil, stop(context.Cause(ctx))
		}
		select {
		case queue <- wr:
		case <-ctx.Done():
			<-slots
			return nil, stop(context.Cause(ctx))
		}
		go func() {
			defer close(wr.done)
			defer func() { <-slots }()
			if wr.err = r.restoreWindow(ctx, m, k, idx, win, verify, dst, opts, sem, &cnt, fail); wr.err != nil {
				cancel(wr.err)
			}
		}()
	}
	if err := stop(nil); err != nil {
		return nil, err
	}
	if err := dst.Flush(ctx); err != nil {
		return nil, fmt.Errorf("%s: flush: %w", where, err)
	}
	res.BytesWritten, res.BytesFetched, res.Repaired, res.Damaged = written.Load(), fetched.Load(), cnt.repaired.Load(), damaged
	slices.SortFunc(res.Damaged, func(a, b DamagedRange) int { return int(a.Offset - b.Offset) })
	if len(damaged) > 0 {
		return res, fmt.Errorf("%s: %d damaged chunks skipped, first at offset %d (chunk %s): %w", where, len(damaged), res.Damaged[0].Offset, res.Damaged[0].Chunk, ErrCorrupt)
	}
	if got := dg.hex(); got != m.Digest {
		return res, fmt.Errorf("%s: volume digest %s, manifest says %s: %w", where, got, m.Digest, ErrMismatch)
	}
	if opts.StatePath != "" {
		if err := os.Remove(opts.StatePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("removing restore state", "path", opts.StatePath, "err", err)
		}
	}
	pos = m.Size
	report(PhaseDone)
	r.log.Info("restore done", "op", "restore", "volume", m.Volume, "id", m.ID, "written", res.BytesWritten, "resumed_pages", res.Resumed, "repaired_chunks", res.Repaired)
	return res, nil
}

// fetchItem is one chunk to fetch: its chunk number and location.
type fetchItem struct {
	c    int64
	id   ChunkID
	leaf ChunkID
	loc  chunkLoc
}

// fetchRange is a run of chunk records of one pack read with one Get.
type fetchRange struct {
	pack     ChunkID
	off, end int64
	items    []fetchItem
}

// planFetch groups items by pack and coalesces them into ranges of at
// most 16 MiB with gaps of at most 1 MiB.
func planFetch(idx *chunkIndex, items []fetchItem) []fetchRange {
	slices.SortFunc(items, func(a, b fetchItem) int {
		if a.loc.pack != b.loc.pack {
			return int(a.loc.pack - b.loc.pack)
		}
		return int(int64(a.loc.offset) - int64(b.loc.offset))
	})
	var out []fetchRange
	for _, it := range items {
		s, e := int64(it.loc.offset), int64(it.loc.offset)+int64(it.loc.length)
		if n := len(out); n > 0 && out[n-1].pack == idx.packs[it.loc.pack] && s <= out[n-1].end+(1<<20) && e-out[n-1].off <= 16<<20 {
			if s < out[n-1].end { // the same record twice (one chunk used twice)
				out[n-1].items = append(out[n-1].items, it)
				continue
			}
			out[n-1].end = e
			out[n-1].items = append(out[n-1].items, it)
			continue
		}
		out = append(out, fetchRange{pack: idx.packs[it.loc.pack], off: s, end: e, items: []fetchItem{it}})
	}
	return out
}

// isDamage reports whether err is damage to the stored data, which
// restore and verify report per chunk: ErrCorrupt (a record or pack that
// fails a check, a pack shorter than its index), ErrMissing (a pack that is
// not on the target), ErrKey (an encrypted record where the backup is not:
// the key was checked against the manifest before). Anything else (a
// target that does not answer, a plugin that died, denied access, a
// cancelled context) says nothing about the data: it aborts the operation
// instead of being reported as bad chunks.
func isDamage(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrMissing) || errors.Is(err, ErrKey)
}

// fetchRange reads one range and calls fn with each record in it, or with
// the error that kept it from being read: fn reports damage (isDamage) and
// returns any other error, which ends the range. rec is valid only during
// fn.
func (r *Repository) fetchRange(ctx context.Context, fr fetchRange, fetched *atomic.Int64, fn func(it fetchItem, rec []byte, err error) error) error {
	bp := rangeBufs.Get().(*[]byte)
	defer rangeBufs.Put(bp)
	buf, err := r.getRangeInto(ctx, fr, *bp)
	if err != nil && ctx.Err() != nil {
		return err
	}
	if cap(buf) > cap(*bp) {
		*bp = buf[:0]
	}
	fetched.Add(int64(len(buf)))
	for _, it := range fr.items {
		s, e := int64(it.loc.offset)-fr.off, int64(it.loc.offset)+int64(it.loc.length)-fr.off
		var rec []byte
		ierr := err
		if ierr == nil && e > int64(len(buf)) {
			ierr = fmt.Errorf("pack %s is shorter than its index says: %w", fr.pack, ErrCorrupt)
		} else if ierr == nil {
			rec = buf[s:e]
		}
		if err := fn(it, rec, ierr); err != nil {
			return err
		}
	}
	return nil
}

// rangeBufs recycles the buffers ranges are read into (up to 16 MiB each:
// a fresh one costs clearing it).
var rangeBufs = sync.Pool{New: func() any { return new([]byte) }}

func (r *Repository) getRange(ctx context.Context, fr fetchRange) ([]byte, error) {
	return r.getRangeInto(ctx, fr, nil)
}

// getRangeInto reads range fr into buf if it is large enough, else into a
// new buffer.
func (r *Repository) getRangeInto(ctx context.Context, fr fetchRange, buf []byte) ([]byte, error) {
	rc, n, err := r.t.Get(ctx, packKey(fr.pack), fr.off, fr.end-fr.off)
	if err != nil {
		switch {
		case errors.Is(err, plugins.ErrNotFound):
			err = fmt.Errorf("%w: %w", err, ErrMissing)
		case errors.Is(err, plugins.ErrInvalidRange):
			// The range starts past the pack's end.
			err = fmt.Errorf("%w: the pack is shorter than its index says: %w", err, ErrCorrupt)
		}
		return nil, &packError{pack: fr.pack, err: err}
	}
	defer rc.Close()
	if int64(cap(buf)) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, &packError{pack: fr.pack, err: fmt.Errorf("read %d+%d: %w", fr.off, fr.end-fr.off, err)}
	}
	return buf, nil
}

// packError is an error reading a pack; it names the pack, so that the
// callers that name the pack of a bad record do not name it again.
type packError struct {
	pack ChunkID
	err  error
}

func (e *packError) Error() string { return fmt.Sprintf("pack %s: %v", e.pack, e.err) }
func (e *packError) Unwrap() error { return e.err }

// inPack returns err naming pack, unless it names a pack already.
func inPack(pack ChunkID, err error) error {
	if _, ok := errors.AsType[*packError](err); ok {
		return err
	}
	return &packError{pack: pack, err: err}
}

// restoreScratch is a range worker's reusable buffers: decoding, and
// coalescing the writes of consecutive chunks.
type restoreScratch struct {
	dec  decodeScratch
	wbuf []byte
}

var restoreScratches = sync.Pool{New: func() any { return &restoreScratch{wbuf: make([]byte, 0, restoreWriteSize)} }}

// restoreWriteSize is the largest write restore makes: consecutive chunks
// of a range are written together.
const restoreWriteSize = 1 << 20

// coalescer gathers writes of consecutive chunks into one.
type coalescer struct {
	dst     Destination
	buf     []byte
	off     int64
	written *atomic.Int64
	volume  string
}

func (w *coalescer) add(ctx context.Context, off int64, p []byte) error {
	if len(w.buf) > 0 && (off != w.off+int64(len(w.buf)) || len(w.buf)+len(p) > cap(w.buf)) {
		if err := w.flush(ctx); err != nil {
			return err
		}
	}
	if len(w.buf) == 0 {
		w.off = off
	}
	w.buf = append(w.buf, p...)
	return nil
}

func (w *coalescer) flush(ctx context.Context) error {
	if len(w.buf) == 0 {
		return nil
	}
	if _, err := w.dst.WriteAt(ctx, w.buf, w.off); err != nil {
		return fmt.Errorf("restore of volume %q: write at %d: %w", w.volume, w.off, err)
	}
	w.written.Add(int64(len(w.buf)))
	w.buf = w.buf[:0]
	return nil
}

// restoreCounts are a restore's counters, shared by its windows.
type restoreCounts struct {
	written, fetched atomic.Int64 // bytes
	repaired         atomic.Int64 // chunks of verified windows restored again
}

// restoreWindow restores the chunks of a window of pages; with verify
// (the state file says the window was restored before), only those the
// destination does not hold.
func (r *Repository) restoreWindow(ctx context.Context, m *Manifest, k *Key, idx *chunkIndex, win []pageResult, verify bool, dst Destination, opts RestoreOptions, sem chan struct{}, cnt *restoreCounts, fail func(int64, ChunkID, error) error) error {
	written, fetched := &cnt.written, &cnt.fetched
	var held []bool // verify: per chunk of the window, whether dst holds it
	if verify {
		var err error
		if held, err = heldChunks(ctx, m, win, dst); err != nil {
			return err
		}
	}
	first := int64(win[0].i) * int64(m.PageChunks)
	var items []fetchItem
	zeroStart := int64(-1)
	flushZeros := func(end int64) error {
		if zeroStart < 0 {
			return nil
		}
		defer func() { zeroStart = -1 }()
		return writeZeros(ctx, dst, zeroStart*int64(m.ChunkSize), min(end*int64(m.ChunkSize), m.Size), written)
	}
	for _, pr := range win {
		for c, id := range pr.p.IDs {
			cn := int64(pr.i)*int64(m.PageChunks) + int64(c)
			if held != nil {
				if held[cn-first] {
					if err := flushZeros(cn); err != nil {
						return err
					}
					continue
				}
				cnt.repaired.Add(1)
			}
			if id.IsZero() {
				// A checked chunk that is not zero is no longer known
				// zero, DestZeroed or not.
				if (!opts.DestZeroed || held != nil) && zeroStart < 0 {
					zeroStart = cn
				}
				continue
			}
			if err := flushZeros(cn); err != nil {
				return err
			}
			loc, ok := idx.chunks[id]
			if !ok {
				if err := fail(cn, id, fmt.Errorf("not in any pack index: %w", ErrMissing)); err != nil {
					return err
				}
				continue
			}
			leaf := id
			if pr.p.Leaves != nil {
				leaf = pr.p.Leaves[c]
			}
			items = append(items, fetchItem{c: cn, id: id, leaf: leaf, loc: loc})
		}
	}
	if n := len(win); n > 0 {
		last := win[n-1]
		if err := flushZeros(int64(last.i)*int64(m.PageChunks) + int64(len(last.p.IDs))); err != nil {
			return err
		}
	}
	ranges := planFetch(idx, items)
	return forEach(ctx, len(ranges), opts.Parallel, func(ctx context.Context, i int) error {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		defer func() { <-sem }()
		sc := restoreScratches.Get().(*restoreScratch)
		defer restoreScratches.Put(sc)
		w := &coalescer{dst: dst, buf: sc.wbuf[:0], written: written, volume: m.Volume}
		err := r.fetchRange(ctx, ranges[i], fetched, func(it fetchItem, rec []byte, err error) error {
			// check returns the plaintext in sc (or rec): w.add copies it
			// before the next check.
			check := func(rec []byte) ([]byte, error) {
				p, leaf, err := decodeRecordScratch(rec, k, it.id, m.chunkLen(it.c), &sc.dec)
				if err == nil && len(p) != m.chunkLen(it.c) {
					err = fmt.Errorf("chunk %s is %d bytes, the map needs %d: %w", it.id, len(p), m.chunkLen(it.c), ErrCorrupt)
				}
				if err == nil && k != nil {
					if leaf.IsZero() { // an older record: its id is not keyed from the leaf
						leaf = sha256.Sum256(p)
					}
					if leaf != it.leaf {
						err = fmt.Errorf("chunk %s: plaintext hash differs from the map's: %w", it.id, ErrCorrupt)
					}
				}
				return p, err
			}
			var p []byte
			if err == nil {
				p, err = check(rec)
			}
			if isDamage(err) {
				p, err = r.tryAlts(ctx, idx, it.id, err, check)
			}
			switch {
			case err != nil && !isDamage(err):
				// The target failed, not the chunk: no damage to skip.
				return fmt.Errorf("restore of volume %q backup %s: chunk %s at offset %d: %w", m.Volume, m.ID, it.id, it.c*int64(m.ChunkSize), err)
			case err != nil:
				return fail(it.c, it.id, inPack(ranges[i].pack, err))
			}
			return w.add(ctx, it.c*int64(m.ChunkSize), p)
		})
		if err == nil {
			err = w.flush(ctx)
		}
		sc.wbuf = w.buf[:0]
		return err
	})
}

// tryAlts tries the other stored copies of chunk id after the first
// failed with first; it returns the first copy that passes check. A copy
// that cannot be read for another reason than damage (isDamage) ends the
// search with that error: the chunk may not be damaged at all.
func (r *Repository) tryAlts(ctx context.Context, idx *chunkIndex, id ChunkID, first error, check func([]byte) ([]byte, error)) ([]byte, error) {
	for _, loc := range idx.alts[id] {
		fr := fetchRange{pack: idx.packs[loc.pack], off: int64(loc.offset), end: int64(loc.offset) + int64(loc.length)}
		rec, err := r.getRange(ctx, fr)
		if err == nil && int64(len(rec)) != fr.end-fr.off {
			err = fmt.Errorf("pack %s is shorter than its index says: %w", fr.pack, ErrCorrupt)
		}
		if err != nil && !isDamage(err) {
			return nil, fmt.Errorf("chunk %s: reading another copy: %w", id, err)
		}
		if err != nil {
			continue
		}
		if p, err := check(rec); err == nil {
			r.log.Warn("chunk damaged in one pack, read from another copy", "chunk", id.String(), "pack", fr.pack.String(), "first_error", first)
			return p, nil
		}
	}
	return nil, first
}

var zeroBuf = make([]byte, 1<<20)

// heldChunks reads the chunks of win back from dst and reports, per chunk
// of the window, whether it holds what the map says: zeros for a zero
// chunk, else plaintext whose SHA-256 is the chunk's leaf. It returns nil
// (hold nothing: restore everything) if dst cannot read back.
func heldChunks(ctx context.Context, m *Manifest, win []pageResult, dst Destination) ([]bool, error) {
	rd, ok := dst.(DestinationReader)
	if !ok {
		return nil, nil
	}
	bp := readBackBufs.Get().(*[]byte)
	defer readBackBufs.Put(bp)
	per := max(1, len(*bp)/m.ChunkSize) // chunks per read
	var held []bool
	for _, pr := range win {
		for c := 0; c < len(pr.p.IDs); c += per {
			n := min(per, len(pr.p.IDs)-c)
			cn := int64(pr.i)*int64(m.PageChunks) + int64(c)
			off := cn * int64(m.ChunkSize)
			buf := (*bp)[:min(int64(n)*int64(m.ChunkSize), m.Size-off)]
			if got, err := rd.ReadAt(ctx, buf, off); err != nil && !(errors.Is(err, io.EOF) && got == len(buf)) {
				return nil, fmt.Errorf("restore of volume %q backup %s: reading back what an earlier run restored at %d: %w", m.Volume, m.ID, off, err)
			}
			for j := range n {
				p := buf[j*m.ChunkSize : min((j+1)*m.ChunkSize, len(buf))]
				leaf := pr.p.leaf(c + j)
				if leaf.IsZero() {
					held = append(held, allZero(p))
				} else {
					held = append(held, ChunkID(sha256.Sum256(p)) == leaf)
				}
			}
		}
	}
	return held, nil
}

// readBackBufs holds the 1 MiB buffers heldChunks reads into.
var readBackBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func writeZeros(ctx context.Context, dst Destination, off, end int64, written *atomic.Int64) error {
	if z, ok := dst.(Zeroer); ok {
		if err := z.Zero(ctx, off, end-off); err != nil {
			return fmt.Errorf("zero %d+%d: %w", off, end-off, err)
		}
		written.Add(end - off)
		return nil
	}
	for off < end {
		n := min(end-off, int64(len(zeroBuf)))
		if _, err := dst.WriteAt(ctx, zeroBuf[:n], off); err != nil {
			return fmt.Errorf("write zeros at %d: %w", off, err)
		}
		written.Add(n)
		off += n
	}
	return nil
}

func readRestoreState(path string) (restoreState, error) {
	var st restoreState
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&st); err != nil || st.PagesDone < 0 {
		return restoreState{}, fmt.Errorf("restore state %s: %v: %w", path, err, ErrCorrupt)
	}
	if d.More() {
		return restoreState{}, fmt.Errorf("restore state %s: data after the state's object: %w", path, ErrCorrupt)
	}
	return st, nil
}

// RestoreStateOf reads the state file of an interrupted restore (see
// RestoreOptions.StatePath): the manifest key it restores and how many
// map pages it recorded as restored.
func RestoreStateOf(path string) (manifestKey string, pagesDone int, err error) {
	st, err := readRestoreState(path)
	if err != nil {
		return "", 0, err
	}
	return st.Manifest, st.PagesDone, nil
}

// writeRestoreState replaces the state file atomically (temp, fsync,
// rename, fsync dir).
func writeRestoreState(path string, st restoreState) error {
	if err := atomicfile.Write(path, marshalJSON(st)); err != nil {
		return fmt.Errorf("restore state %s: %w", path, err)
	}
	return nil
}

// FileDestination restores into an *os.File of a given size (an image
// file or a block device); Flush is fsync.
type FileDestination struct {
	F *os.File
	N int64
}

// Size returns N.
func (d FileDestination) Size() int64 { return d.N }

// WriteAt writes p at off.
func (d FileDestination) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return d.F.WriteAt(p, off)
}

// Flush fsyncs the file.
func (d FileDestination) Flush(context.Context) error { return d.F.Sync() }

// ReadAt reads back what the file holds at off.
func (d FileDestination) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return d.F.ReadAt(p, off)
}
