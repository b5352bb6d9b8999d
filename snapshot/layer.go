package snapshot

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// layer is one open layer of the pool: a sparse data file holding each
// block at its volume offset, and a log of the layer's block map. One
// *layer exists per open layer id in a Store, shared by every volume and
// view whose chain holds it.
type layer struct {
	id   layerID
	data *os.File
	log  *os.File

	logMu   sync.Mutex
	logSize int64

	// mu guards m. Lock order: Volume.ci.mu before layer.mu.
	mu sync.RWMutex
	m  *extMap // block -> kindData, kindZero or kindTrim

	// dirSynced is set once the layer's directory entries are durable.
	dirSynced bool

	// regroupMu guards the bits, one per regroupSize region of the data
	// file, that Volume.regroup keeps: scattered marks a region into
	// which a small write brought blocks new to the layer (so its page
	// cache holds small folios), regrouped one whose page cache a
	// whole-region write has since dropped.
	regroupMu sync.Mutex
	scattered bitset
	regrouped bitset

	refs int // open handles; guarded by Store.mu
}

func layerPaths(dir string, id layerID) (data, log string) {
	base := filepath.Join(dir, id.String())
	return base + ".data", base + ".log"
}

// createLayer makes the files of a new, empty layer. The caller syncs the
// directory.
func createLayer(dir string, id layerID) (*layer, error) {
	dp, lp := layerPaths(dir, id)
	data, err := os.OpenFile(dp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create layer %s: %w", id, err)
	}
	lf, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		_ = data.Close()
		_ = os.Remove(dp)
		return nil, fmt.Errorf("create layer %s: %w", id, err)
	}
	l := &layer{id: id, data: data, log: lf, m: newExtMap()}
	hdr := encodeLogHeader(id)
	if _, err := lf.WriteAt(hdr, 0); err == nil {
		err = unix.Fdatasync(int(lf.Fd()))
	}
	if err != nil {
		l.close()
		_ = os.Remove(dp)
		_ = os.Remove(lp)
		return nil, fmt.Errorf("create layer %s: write log header: %w", id, err)
	}
	l.logSize = int64(len(hdr))
	return l, nil
}

// openLayer opens an existing layer and replays its log into its map.
//
// committed is, for a sealed layer, the longest log length any volume's
// metadata records as synced; it is -1 for a head, whose flushes do not
// write metadata. A log that ends in a torn tail — an incomplete or damaged
// last record, the unsynced end of an append a crash interrupted — is cut
// back to its good prefix: for a head unless a valid record follows the
// damage, for a sealed layer when the damage lies past committed (what a
// merge appended before its commit: only copies of blocks the chain still
// holds below). Any other damage is corruption and the layer does not
// open (FORMAT.md, "Torn tails"). clean reports whether the log ends with
// a clean-close record.
func openLayer(dir string, id layerID, committed int64) (*layer, bool, error) {
	role := "sealed"
	if committed < 0 {
		role = "head"
	}
	dp, lp := layerPaths(dir, id)
	data, err := os.OpenFile(dp, os.O_RDWR, 0)
	if err != nil {
		return nil, false, fmt.Errorf("%s layer %s: data file: %w", role, id, missingIsCorrupt(err))
	}
	lf, err := os.OpenFile(lp, os.O_RDWR, 0)
	if err != nil {
		_ = data.Close()
		return nil, false, fmt.Errorf("%s layer %s: log file: %w", role, id, missingIsCorrupt(err))
	}
	l := &layer{id: id, data: data, log: lf, m: newExtMap(), dirSynced: true}
	clean, err := l.load(committed)
	if err != nil {
		l.close()
		return nil, false, fmt.Errorf("%s layer %s log: %w", role, id, err)
	}
	return l, clean, nil
}

// load replays the log into l.m, cutting a torn tail, and sets l.logSize.
func (l *layer) load(committed int64) (clean bool, err error) {
	last, end, err := l.replay(func(e logEntry) error {
		l.m.set(e.start, e.count, e.kind)
		return nil
	})
	if err == nil {
		if end < committed {
			return false, fmt.Errorf("ends at %d, but %d bytes were committed: %w", end, committed, ErrCorrupt)
		}
		l.logSize = end
		return last == recClean, nil
	}
	if !errors.Is(err, errTorn) {
		return false, asCorrupt(err)
	}
	if committed >= 0 && end < committed {
		return false, fmt.Errorf("%v, within the %d committed bytes: %w", err, committed, ErrCorrupt)
	}
	if committed < 0 {
		fi, serr := l.log.Stat()
		if serr != nil {
			return false, fmt.Errorf("stat: %w", serr)
		}
		if next, ok := validRecordAfter(l.log, end, fi.Size()); ok {
			return false, fmt.Errorf("%v, and a valid record follows at %d: synced records are damaged: %w", err, next, ErrCorrupt)
		}
	}
	if terr := l.log.Truncate(end); terr != nil {
		return false, fmt.Errorf("cut torn tail at %d: %w", end, terr)
	}
	if serr := unix.Fdatasync(int(l.log.Fd())); serr != nil {
		return false, fmt.Errorf("sync after cutting torn tail at %d: %w", end, serr)
	}
	l.logSize = end
	return false, nil
}

// validRecordAfter reports whether the damaged record at off, followed by
// its own length field, is succeeded by a record that decodes cleanly. A
// crash tears only the end of the last append, so a valid record after the
// damage means the damage is not a torn tail. A damaged length field
// cannot be followed; the damage is then taken as a tail.
func validRecordAfter(f io.ReaderAt, off, size int64) (int64, bool) {
	var hdr [recHeaderSize]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return 0, false
	}
	n := int64(binary.LittleEndian.Uint32(hdr[:4]))
	if n > maxRecPayload {
		return 0, false
	}
	next := off + recHeaderSize + n + recTrailerSize
	if next >= size {
		return 0, false
	}
	lr := &logReader{r: io.NewSectionReader(f, next, size-next), off: next}
	if err := lr.next(nil); err != nil {
		return 0, false
	}
	return next, true
}

func missingIsCorrupt(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

func asCorrupt(err error) error {
	if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupportedFormat) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// replay decodes the whole log, calling fn for every extent in order. It
// returns the type of the last good record and the offset where the good
// prefix ends.
func (l *layer) replay(fn func(logEntry) error) (last byte, end int64, err error) {
	r := bufio.NewReaderSize(io.NewSectionReader(l.log, 0, 1<<62), 1<<20)
	hdr := make([]byte, logHeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, 0, fmt.Errorf("header: %v: %w", err, ErrCorrupt)
	}
	if err := decodeLogHeader(hdr, l.id); err != nil {
		return 0, 0, err
	}
	lr := &logReader{r: r, off: logHeaderSize}
	for {
		err := lr.next(fn)
		if err == io.EOF {
			return lr.last, lr.off, nil
		}
		if err != nil {
			return lr.last, lr.off, err
		}
	}
}

// sums replays the log and returns the latest checksum of every block the
// layer holds as data; if kinds is not nil, it also gets the layer's map.
func (l *layer) sums(kinds *extMap) (map[uint64]uint64, error) {
	sums := make(map[uint64]uint64)
	_, _, err := l.replay(func(e logEntry) error {
		if kinds != nil {
			kinds.set(e.start, e.count, e.kind)
		}
		for i := uint64(0); i < e.count; i++ {
			if e.kind == kindData {
				sums[e.start+i] = e.sums[i]
			} else {
				delete(sums, e.start+i)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer %s log: %w", l.id, asCorrupt(err))
	}
	return sums, nil
}

// appendLog appends encoded records and makes them durable.
func (l *layer) appendLog(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if _, err := l.log.WriteAt(b, l.logSize); err != nil {
		// Cut whatever part landed so the next append starts on a record boundary.
		_ = l.log.Truncate(l.logSize)
		return fmt.Errorf("layer %s: append log: %w", l.id, err)
	}
	if err := unix.Fdatasync(int(l.log.Fd())); err != nil {
		return fmt.Errorf("layer %s: sync log: %w", l.id, err)
	}
	l.logSize += int64(len(b))
	return nil
}

// syncedLogSize returns the length of the log that appends have synced.
func (l *layer) syncedLogSize() int64 {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	return l.logSize
}

func (l *layer) syncData() error {
	if err := unix.Fdatasync(int(l.data.Fd())); err != nil {
		return fmt.Errorf("layer %s: sync data: %w", l.id, err)
	}
	return nil
}

// readBlocks reads whole blocks at a block-aligned offset.
func (l *layer) readAt(p []byte, off int64) error {
	n, err := l.data.ReadAt(p, off)
	if err == io.EOF && n < len(p) {
		return fmt.Errorf("layer %s: data ends before offset %d: %w", l.id, off+int64(n), ErrCorrupt)
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("layer %s: read at %d: %w", l.id, off, err)
	}
	return nil
}

func (l *layer) writeAt(p []byte, off int64) error {
	if h := writeFault; h != nil {
		if err := h(off); err != nil {
			return fmt.Errorf("layer %s: write at %d: %w", l.id, off, err)
		}
	}
	if _, err := l.data.WriteAt(p, off); err != nil {
		return fmt.Errorf("layer %s: write at %d: %w", l.id, off, err)
	}
	return nil
}

// writeFault, set only by tests, fails layer writes at the offsets it
// returns an error for.
var writeFault func(off int64) error

// holdsData reports whether the layer holds data for any of the blocks
// [start, end). Zeroed and trimmed blocks hold none: their range of the
// file is punched, and has no page cache.
func (l *layer) holdsData(start, end uint64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	found := false
	l.m.ascend(start, end, func(r run) bool {
		found = r.val == kindData
		return !found
	})
	return found
}

// markScattered records that a small write brought blocks new to the
// layer into regions first to last (of regroupSize bytes).
func (l *layer) markScattered(first, last uint64) {
	l.regroupMu.Lock()
	for i := first; i <= last; i++ {
		l.scattered.set(i)
	}
	l.regroupMu.Unlock()
}

// wantsRegroup reports whether region i is scattered and not regrouped.
func (l *layer) wantsRegroup(i uint64) bool {
	l.regroupMu.Lock()
	defer l.regroupMu.Unlock()
	return l.scattered.has(i) && !l.regrouped.has(i)
}

// markRegrouped records that region i's page cache has been dropped.
func (l *layer) markRegrouped(i uint64) {
	l.regroupMu.Lock()
	l.regrouped.set(i)
	l.regroupMu.Unlock()
}

// bitset is a growable set of small integers.
type bitset []uint64

func (b bitset) has(i uint64) bool {
	w := i / 64
	return w < uint64(len(b)) && b[w]&(1<<(i%64)) != 0
}

func (b *bitset) set(i uint64) {
	w := i / 64
	if w >= uint64(len(*b)) {
		*b = append(*b, make([]uint64, w+1-uint64(len(*b)))...)
	}
	(*b)[w] |= 1 << (i % 64)
}

// dropCache asks the kernel to drop the clean page cache of [off, off+n)
// of the data file (posix_fadvise DONTNEED). Only a cache operation: the
// data stays as written, and dirty pages stay (their writeback starts).
func (l *layer) dropCache(off, n int64) {
	_ = unix.Fadvise(int(l.data.Fd()), off, n, unix.FADV_DONTNEED)
}

// punch frees the storage of [off, off+n) in the data file. It is only
// space reclamation: callers never read blocks they punched, so a failure
// loses nothing but the space.
func (l *layer) punch(off, n int64) error {
	return unix.Fallocate(int(l.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// ownedBlocks counts the blocks the layer holds as data.
func (l *layer) ownedBlocks() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var n uint64
	l.m.each(func(r run) bool {
		if r.val == kindData {
			n += r.n
		}
		return true
	})
	return n
}

func (l *layer) close() {
	_ = l.data.Close()
	_ = l.log.Close()
}
