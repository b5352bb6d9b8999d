package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Block kinds, as stored in layer logs and layer maps.
const (
	kindNone uint32 = 0 // not written in this layer: fall through
	kindData uint32 = 1 // this layer holds the block's 4 KiB at its offset
	kindZero uint32 = 2 // reads as zeros; reported as allocated zeros
	kindTrim uint32 = 3 // reads as zeros; reported as a hole
)

// Layer log format (FORMAT.md, "Layer log").
const (
	logMagic      = "STRLAYR1"
	logVersion    = 1
	logHeaderSize = 32

	recExtents = 1
	recOpen    = 2
	recClean   = 3

	recHeaderSize  = 5 // u32 payload length, u8 type
	recTrailerSize = 8 // xxhash64 of header and payload

	// maxRecPayload bounds one record so a corrupt length cannot make a
	// reader allocate without limit.
	maxRecPayload = 1 << 20

	entryHeaderSize = 17 // u64 start, u64 count, u8 kind
	// maxBlocks bounds block numbers: MaxSize / BlockSize.
	maxBlocks = uint64(MaxSize / BlockSize)
)

// errTorn reports a log that ends in an incomplete or damaged record.
var errTorn = errors.New("torn or damaged record")

func encodeLogHeader(id layerID) []byte {
	b := make([]byte, logHeaderSize)
	copy(b, logMagic)
	binary.LittleEndian.PutUint32(b[8:], logVersion)
	binary.LittleEndian.PutUint32(b[12:], BlockSize)
	binary.LittleEndian.PutUint64(b[16:], uint64(id))
	binary.LittleEndian.PutUint64(b[24:], xxhash.Sum64(b[:24]))
	return b
}

func decodeLogHeader(b []byte, want layerID) error {
	if len(b) < logHeaderSize {
		return fmt.Errorf("header: %d bytes, want %d: %w", len(b), logHeaderSize, ErrCorrupt)
	}
	if string(b[:8]) != logMagic {
		return fmt.Errorf("header: bad magic %q: %w", b[:8], ErrCorrupt)
	}
	if got := xxhash.Sum64(b[:24]); got != binary.LittleEndian.Uint64(b[24:]) {
		return fmt.Errorf("header: checksum mismatch: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != logVersion {
		return fmt.Errorf("header: version %d (this build reads %d): %w", v, logVersion, ErrUnsupportedFormat)
	}
	if bs := binary.LittleEndian.Uint32(b[12:]); bs != BlockSize {
		return fmt.Errorf("header: block size %d, want %d: %w", bs, BlockSize, ErrCorrupt)
	}
	if id := layerID(binary.LittleEndian.Uint64(b[16:])); want != 0 && id != want {
		return fmt.Errorf("header: layer id %s, want %s: %w", id, want, ErrCorrupt)
	}
	return nil
}

// logEntry is one extent of a records payload. Sums holds one xxhash64 per
// block for kindData entries and is nil otherwise.
type logEntry struct {
	start, count uint64
	kind         uint32
	sums         []uint64
}

// logEncoder builds records into one buffer that is appended to the log
// with a single write.
type logEncoder struct {
	buf []byte
	rec int // offset of the open extents record, or -1
}

func newLogEncoder() *logEncoder { return &logEncoder{rec: -1} }

func (e *logEncoder) reset() { e.buf, e.rec = e.buf[:0], -1 }

func (e *logEncoder) open(typ byte) {
	e.rec = len(e.buf)
	e.buf = append(e.buf, 0, 0, 0, 0, typ)
}

func (e *logEncoder) close() {
	if e.rec < 0 {
		return
	}
	n := len(e.buf) - e.rec - recHeaderSize
	binary.LittleEndian.PutUint32(e.buf[e.rec:], uint32(n))
	e.buf = binary.LittleEndian.AppendUint64(e.buf, xxhash.Sum64(e.buf[e.rec:]))
	e.rec = -1
}

// marker appends a payload-less record (recOpen, recClean).
func (e *logEncoder) marker(typ byte) {
	e.close()
	e.open(typ)
	e.close()
}

// extent appends one extent, splitting it across records as needed. For
// kindData, sum(b) gives the checksum of block b.
func (e *logEncoder) extent(start, count uint64, kind uint32, sum func(uint64) uint64) {
	for count > 0 {
		if e.rec < 0 {
			e.open(recExtents)
		}
		room := maxRecPayload - (len(e.buf) - e.rec - recHeaderSize) - entryHeaderSize
		if room <= 0 {
			e.close()
			continue
		}
		n := count
		if kind == kindData && n > uint64(room/8) {
			n = uint64(room / 8)
		}
		if n == 0 {
			e.close()
			continue
		}
		e.buf = binary.LittleEndian.AppendUint64(e.buf, start)
		e.buf = binary.LittleEndian.AppendUint64(e.buf, n)
		e.buf = append(e.buf, byte(kind))
		if kind == kindData {
			for b := start; b < start+n; b++ {
				e.buf = binary.LittleEndian.AppendUint64(e.buf, sum(b))
			}
		}
		start += n
		count -= n
	}
}

// bytes closes any open record and returns the encoded records.
func (e *logEncoder) bytes() []byte {
	e.close()
	return e.buf
}

// logReader decodes the records that follow the header of a layer log.
type logReader struct {
	r    io.Reader
	off  int64 // offset just past the last good record
	hdr  [recHeaderSize]byte
	buf  []byte
	sums []uint64 // decoded checksums, reused across records
	last byte     // type of the last good record
}

// next decodes one record, calling fn for each extent of an extents record.
// It returns io.EOF at a clean end and an error wrapping errTorn at an
// incomplete or damaged record; lr.off then holds where the good prefix ends.
// fn's entry.sums is only valid during the call.
func (lr *logReader) next(fn func(logEntry) error) error {
	if _, err := io.ReadFull(lr.r, lr.hdr[:]); err != nil {
		if err == io.EOF {
			return io.EOF
		}
		return fmt.Errorf("record at %d: short header: %w", lr.off, errTorn)
	}
	n := binary.LittleEndian.Uint32(lr.hdr[:4])
	typ := lr.hdr[4]
	if n > maxRecPayload {
		return fmt.Errorf("record at %d: payload length %d exceeds %d: %w", lr.off, n, maxRecPayload, errTorn)
	}
	total := int(n) + recTrailerSize
	if cap(lr.buf) < total {
		lr.buf = make([]byte, total)
	}
	body := lr.buf[:total]
	if _, err := io.ReadFull(lr.r, body); err != nil {
		return fmt.Errorf("record at %d: short payload: %w", lr.off, errTorn)
	}
	d := xxhash.New()
	_, _ = d.Write(lr.hdr[:])
	_, _ = d.Write(body[:n])
	if d.Sum64() != binary.LittleEndian.Uint64(body[n:]) {
		return fmt.Errorf("record at %d: checksum mismatch: %w", lr.off, errTorn)
	}
	switch typ {
	case recOpen, recClean:
		if n != 0 {
			return fmt.Errorf("record at %d: marker with %d-byte payload: %w", lr.off, n, ErrCorrupt)
		}
	case recExtents:
		if err := decodeExtents(body[:n], &lr.sums, fn); err != nil {
			return fmt.Errorf("record at %d: %w", lr.off, err)
		}
	default:
		return fmt.Errorf("record at %d: unknown type %d: %w", lr.off, typ, ErrCorrupt)
	}
	lr.off += int64(recHeaderSize + total)
	lr.last = typ
	return nil
}

// decodeExtents decodes the entries of an extents payload. The sums of a
// data entry are decoded into *buf, reused across entries and records, so
// fn must not keep entry.sums past its call.
func decodeExtents(p []byte, buf *[]uint64, fn func(logEntry) error) error {
	sums := *buf
	defer func() { *buf = sums }()
	for len(p) > 0 {
		if len(p) < entryHeaderSize {
			return fmt.Errorf("entry: %d trailing bytes: %w", len(p), ErrCorrupt)
		}
		e := logEntry{
			start: binary.LittleEndian.Uint64(p),
			count: binary.LittleEndian.Uint64(p[8:]),
			kind:  uint32(p[16]),
		}
		p = p[entryHeaderSize:]
		if e.count == 0 || e.start >= maxBlocks || e.count > maxBlocks-e.start {
			return fmt.Errorf("entry: blocks [%d,+%d) out of range: %w", e.start, e.count, ErrCorrupt)
		}
		switch e.kind {
		case kindData:
			if uint64(len(p)/8) < e.count {
				return fmt.Errorf("entry: %d checksums do not fit: %w", e.count, ErrCorrupt)
			}
			sums = sums[:0]
			for i := uint64(0); i < e.count; i++ {
				sums = append(sums, binary.LittleEndian.Uint64(p[8*i:]))
			}
			p = p[8*e.count:]
			e.sums = sums
		case kindZero, kindTrim:
		default:
			return fmt.Errorf("entry: unknown block kind %d: %w", e.kind, ErrCorrupt)
		}
		if fn != nil {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}
