package snapshot

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// compactMinSize is the smallest head log worth compacting. Overwrites
// append records at every flush, so a long-lived head's log grows with
// the number of flushed writes, not with its content; compaction rewrites
// it from its own replay once it is this large and at least four times
// what a fresh encoding would take.
var compactMinSize int64 = 16 << 20

// maybeCompact compacts the head's log when it is mostly superseded
// records. Callers hold the volume's flushMu, so nothing appends meanwhile.
func (l *layer) maybeCompact(dir string) error {
	if l.logSize < compactMinSize {
		return nil
	}
	l.mu.RLock()
	var est int64
	l.m.each(func(r run) bool {
		est += entryHeaderSize
		if r.val == kindData {
			est += 8 * int64(r.n)
		}
		return true
	})
	l.mu.RUnlock()
	if l.logSize < 4*(est+logHeaderSize) {
		return nil
	}
	return l.compact(dir)
}

// compact rewrites the log as the minimal records giving the same map and
// checksums: write ID.log.tmp, fdatasync, rename, fsync the directory.
func (l *layer) compact(dir string) error {
	l.logMu.Lock()
	defer l.logMu.Unlock()
	kinds := newExtMap()
	sums, err := l.sums(kinds)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	enc := newLogEncoder()
	enc.buf = append(enc.buf, encodeLogHeader(l.id)...)
	sum := func(b uint64) uint64 { return sums[b] }
	kinds.each(func(r run) bool {
		enc.extent(r.start, r.n, r.val, sum)
		return true
	})
	b := enc.bytes()
	_, lp := layerPaths(dir, l.id)
	tmp := lp + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("layer %s: compact: %w", l.id, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if err == nil {
		err = os.Rename(tmp, lp)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("layer %s: compact: %w", l.id, err)
	}
	old := l.log
	l.log = f
	l.logSize = int64(len(b))
	_ = old.Close()
	return nil
}
