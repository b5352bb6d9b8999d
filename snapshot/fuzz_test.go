package snapshot

// Fuzz targets for every decoder of on-disk metadata (volume meta, layer log
// header, layer log records, a whole layer log through openLayer) and a
// model-based target for the extent map those logs are replayed into.
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzDecodeMeta$' -fuzztime 60s ./snapshot/
//
// Crashers the fuzzer finds land in testdata/fuzz/<FuzzName>/ and are then
// replayed by every plain `go test` run.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// ---------------------------------------------------------------------------
// Volume metadata

// fuzzMeta is a realistic volume: two named snapshots, one anonymous sealed
// layer a clone inherited, and the head, with sizes growing up the chain.
func fuzzMeta() *volumeMeta {
	t0 := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	return &volumeMeta{
		Format:  metaFormat,
		Name:    "vol-a",
		Size:    8 << 30,
		Created: t0,
		Layers: []layerMeta{
			{ID: layerID(0x1a).String(), Snapshot: "base", Created: t0.Add(time.Hour), Size: 1 << 30, LogSize: 4096},
			{ID: layerID(0x2b).String(), Created: t0.Add(2 * time.Hour), Size: 4 << 30, LogSize: logHeaderSize},
			{ID: layerID(0x3c).String(), Snapshot: "nightly.2025-03-15", Created: t0.Add(3 * time.Hour), Size: 8 << 30, LogSize: 1 << 40},
			{ID: layerID(0xffffffffffffffff).String(), Created: t0.Add(4 * time.Hour)},
		},
	}
}

// withMetaSum returns the first line of b (a newline is added if missing)
// followed by a correct checksum line, so the fuzzer can reach the JSON
// decoder and validate() without having to forge xxhash64.
func withMetaSum(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	js := append(bytes.Clone(b), '\n')
	return fmt.Appendf(js, "%s%016x\n", metaSumPrefix, xxhash.Sum64(js))
}

// metaJSON marshals an arbitrary value as a meta JSON line with a correct
// checksum: for seeds that encodeMeta (which validates) refuses to produce.
func metaJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	js, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return withMetaSum(js)
}

// rawMeta mirrors volumeMeta as a map so seeds can hold invalid values.
func rawMeta(m *volumeMeta) map[string]any {
	var layers []any
	for _, l := range m.Layers {
		e := map[string]any{"id": l.ID, "created": l.Created}
		if l.Snapshot != "" {
			e["snapshot"] = l.Snapshot
		}
		if l.Size != 0 {
			e["size"] = l.Size
		}
		if l.LogSize != 0 {
			e["log_size"] = l.LogSize
		}
		layers = append(layers, e)
	}
	return map[string]any{
		"format": m.Format, "name": m.Name, "size": m.Size,
		"created": m.Created, "layers": layers,
	}
}

func metasEqual(a, b *volumeMeta) error {
	if a.Format != b.Format || a.Name != b.Name || a.Size != b.Size || !a.Created.Equal(b.Created) {
		return fmt.Errorf("volume fields differ: %+v vs %+v", *a, *b)
	}
	if len(a.Layers) != len(b.Layers) {
		return fmt.Errorf("%d layers vs %d", len(a.Layers), len(b.Layers))
	}
	for i := range a.Layers {
		x, y := a.Layers[i], b.Layers[i]
		if x.ID != y.ID || x.id != y.id || x.Snapshot != y.Snapshot || x.Size != y.Size || x.LogSize != y.LogSize || !x.Created.Equal(y.Created) {
			return fmt.Errorf("layer %d differs: %+v vs %+v", i, x, y)
		}
	}
	return nil
}

// checkDecodeErr is the "clear error" half of every decoder property: the
// error is one of the documented sentinels and says more than the sentinel.
func checkDecodeErr(t *testing.T, what string, err error, sentinels ...error) {
	t.Helper()
	ok := false
	for _, s := range sentinels {
		if errors.Is(err, s) {
			ok = true
			if err.Error() == s.Error() {
				t.Fatalf("%s: bare sentinel %q, no context", what, err)
			}
		}
	}
	if !ok {
		t.Fatalf("%s: error %q (%T) wraps none of %v", what, err, err, sentinels)
	}
	if strings.TrimSpace(err.Error()) == "" {
		t.Fatalf("%s: empty error message", what)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	valid, err := encodeMeta(fuzzMeta())
	if err != nil {
		f.Fatal(err)
	}
	js := valid[:bytes.IndexByte(valid, '\n')+1]
	f.Add(valid)
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add(withMetaSum(nil))
	f.Add(withMetaSum([]byte("{}")))
	f.Add(withMetaSum([]byte("null")))
	for _, n := range []int{1, len(js) / 2, len(js) - 1, len(js), len(js) + 6, len(valid) - 1} {
		f.Add(bytes.Clone(valid[:n]))
	}
	for _, bit := range []int{0, 8*len(js)/3 + 1, 8*(len(js)-2) + 4, 8*(len(valid)-5) + 2} {
		b := bytes.Clone(valid)
		b[bit/8] ^= 1 << (bit % 8)
		f.Add(b)
	}
	// Wrong checksum, malformed checksum lines.
	f.Add(fmt.Appendf(bytes.Clone(js), "%s%016x\n", metaSumPrefix, xxhash.Sum64(js)+1))
	f.Add(fmt.Appendf(bytes.Clone(js), "%s%016X\n", metaSumPrefix, xxhash.Sum64(js)))
	f.Add(fmt.Appendf(bytes.Clone(js), "xxh32=%016x\n", xxhash.Sum64(js)))
	f.Add(fmt.Appendf(bytes.Clone(js), "%s%016x\r\n", metaSumPrefix, xxhash.Sum64(js)))
	f.Add(append(bytes.Clone(valid), valid[len(js):]...))
	// Checksummed but invalid content.
	seed := func(edit func(map[string]any)) {
		r := rawMeta(fuzzMeta())
		edit(r)
		f.Add(metaJSON(f, r))
	}
	layers := func(r map[string]any) []any { return r["layers"].([]any) }
	layer := func(r map[string]any, i int) map[string]any { return layers(r)[i].(map[string]any) }
	seed(func(r map[string]any) { r["extra"] = 1 })
	seed(func(r map[string]any) { layer(r, 0)["extra"] = true })
	seed(func(r map[string]any) { r["name"] = "../x" })
	seed(func(r map[string]any) { r["name"] = "" })
	seed(func(r map[string]any) { r["name"] = strings.Repeat("a", 64) })
	seed(func(r map[string]any) { layer(r, 0)["snapshot"] = "../x" })
	seed(func(r map[string]any) { layer(r, 2)["snapshot"] = "base" })
	seed(func(r map[string]any) { layer(r, 1)["id"] = layer(r, 0)["id"] })
	seed(func(r map[string]any) { layer(r, 3)["id"] = layer(r, 0)["id"] })
	seed(func(r map[string]any) { layer(r, 1)["id"] = strings.ToUpper(layerID(0x1a).String()) })
	seed(func(r map[string]any) { layer(r, 1)["id"] = "0000000000000000" })
	seed(func(r map[string]any) { layer(r, 1)["id"] = "xyz" })
	seed(func(r map[string]any) { layer(r, 1)["id"] = "+00000000000002b" })
	seed(func(r map[string]any) {
		layer(r, 0)["size"], layer(r, 1)["size"] = layer(r, 1)["size"], layer(r, 0)["size"]
	})
	seed(func(r map[string]any) { r["size"] = int64(1 << 30) })
	seed(func(r map[string]any) { r["size"] = int64(4097) })
	seed(func(r map[string]any) { r["size"] = MaxSize + BlockSize })
	seed(func(r map[string]any) { layer(r, 0)["size"] = int64(-4096) })
	seed(func(r map[string]any) { delete(layer(r, 1), "size") })
	seed(func(r map[string]any) { layer(r, 3)["snapshot"] = "head" })
	seed(func(r map[string]any) { layer(r, 3)["size"] = int64(4096) })
	seed(func(r map[string]any) { layer(r, 3)["log_size"] = int64(4096) })
	seed(func(r map[string]any) { delete(layer(r, 1), "log_size") })
	seed(func(r map[string]any) { layer(r, 0)["log_size"] = int64(logHeaderSize - 1) })
	seed(func(r map[string]any) { r["format"] = 2 })
	seed(func(r map[string]any) { delete(r, "format") })
	seed(func(r map[string]any) { r["layers"] = []any{} })
	seed(func(r map[string]any) { r["layers"] = nil })
	seed(func(r map[string]any) { r["created"] = "2025-03-14T15:09:26+01:00" })
	seed(func(r map[string]any) { r["created"] = "yesterday" })
	seed(func(r map[string]any) { r["size"] = "1" })
	// Trailing data after the JSON object, still inside the checksummed line.
	f.Add(withMetaSum(append(bytes.Clone(js[:len(js)-1]), " {}"...)))
	f.Add(withMetaSum([]byte(`{"FORMAT":1,"Name":"v","size":4096,"created":"2025-01-01T00:00:00Z","layers":[{"id":"0000000000000001","created":"2025-01-01T00:00:00Z"}]}`)))

	f.Fuzz(func(t *testing.T, b []byte) {
		checkMeta(t, b)
		checkMeta(t, withMetaSum(b))
	})
}

func checkMeta(t *testing.T, b []byte) {
	m, err := decodeMeta(b)
	if err != nil {
		if m != nil {
			t.Fatalf("decodeMeta returned a meta with error %v", err)
		}
		checkDecodeErr(t, "decodeMeta", err, ErrCorrupt, ErrUnsupportedFormat)
		return
	}
	if err := m.validate(); err != nil {
		t.Fatalf("decoded meta fails validate: %v", err)
	}
	// The checksummed line holds one JSON value and nothing else: a line
	// such as {...}{"format":2} is malformed, not a format-1 meta.
	dec := json.NewDecoder(bytes.NewReader(b[:bytes.IndexByte(b, '\n')]))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("accepted meta is not JSON: %v", err)
	}
	if tok, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("accepted meta with data after the JSON value (next: %v, %v)\ninput: %q", tok, err, b)
	}
	enc, err := encodeMeta(m)
	if err != nil {
		t.Fatalf("decoded meta does not re-encode: %v\ninput: %q", err, b)
	}
	m2, err := decodeMeta(enc)
	if err != nil {
		t.Fatalf("re-encoded meta does not decode: %v\nencoded: %q", err, enc)
	}
	if err := metasEqual(m, m2); err != nil {
		t.Fatalf("round trip: %v\ninput: %q\nencoded: %q", err, b, enc)
	}
	enc2, err := encodeMeta(m2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding is not a fixpoint:\n%q\n%q", enc, enc2)
	}
}

// ---------------------------------------------------------------------------
// Layer log header

func FuzzLogHeader(f *testing.F) {
	h := encodeLogHeader(0x1234)
	f.Add(h, uint64(0x1234))
	f.Add(h, uint64(0))
	f.Add(h, uint64(0x1235))
	f.Add(encodeLogHeader(0xffffffffffffffff), uint64(0xffffffffffffffff))
	f.Add([]byte{}, uint64(1))
	f.Add(h[:8], uint64(0x1234))
	f.Add(h[:31], uint64(0x1234))
	f.Add(append(bytes.Clone(h), h...), uint64(0x1234))
	resum := func(b []byte) []byte {
		binary.LittleEndian.PutUint64(b[24:], xxhash.Sum64(b[:24]))
		return b
	}
	for _, edit := range []func(b []byte){
		func(b []byte) { b[0] = 'X' },
		func(b []byte) { binary.LittleEndian.PutUint32(b[8:], 2) },
		func(b []byte) { binary.LittleEndian.PutUint32(b[12:], 512) },
		func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 0) },
	} {
		b := bytes.Clone(h)
		edit(b)
		f.Add(bytes.Clone(b), uint64(0x1234)) // stale checksum
		f.Add(resum(b), uint64(0x1234))
	}
	for _, bit := range []int{3, 70, 100, 140, 250} {
		b := bytes.Clone(h)
		b[bit/8] ^= 1 << (bit % 8)
		f.Add(b, uint64(0x1234))
	}

	f.Fuzz(func(t *testing.T, b []byte, want uint64) {
		if len(b) > 64 {
			b = b[:64]
		}
		err := decodeLogHeader(b, layerID(want))
		if err != nil {
			checkDecodeErr(t, "decodeLogHeader", err, ErrCorrupt, ErrUnsupportedFormat)
			return
		}
		if len(b) < logHeaderSize {
			t.Fatalf("accepted a %d-byte header", len(b))
		}
		id := layerID(binary.LittleEndian.Uint64(b[16:]))
		if want != 0 && id != layerID(want) {
			t.Fatalf("accepted id %s, want %s", id, layerID(want))
		}
		if enc := encodeLogHeader(id); !bytes.Equal(enc, b[:logHeaderSize]) {
			t.Fatalf("accepted header %x does not re-encode: %x", b[:logHeaderSize], enc)
		}
		if err := decodeLogHeader(encodeLogHeader(id), id); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// ---------------------------------------------------------------------------
// Layer log records

// logItem is one element of a canonical record stream: a marker record, or
// a maximal extent (adjacent contiguous entries of one kind coalesced, data
// checksums concatenated). Record boundaries between extents are not part
// of the stream: the encoder places them as it sees fit.
type logItem struct {
	marker byte // recOpen or recClean; 0 for an extent
	e      logEntry
}

func (it logItem) String() string {
	if it.marker != 0 {
		return fmt.Sprintf("marker(%d)", it.marker)
	}
	return fmt.Sprintf("extent(%d,+%d,kind %d,%d sums)", it.e.start, it.e.count, it.e.kind, len(it.e.sums))
}

func appendItem(items []logItem, it logItem) []logItem {
	if it.marker == 0 && len(items) > 0 {
		p := &items[len(items)-1]
		if p.marker == 0 && p.e.kind == it.e.kind && p.e.start+p.e.count == it.e.start {
			p.e.count += it.e.count
			p.e.sums = append(p.e.sums, it.e.sums...)
			return items
		}
	}
	if it.marker == 0 {
		it.e.sums = slices.Clone(it.e.sums)
	}
	return append(items, it)
}

func itemsEqual(a, b []logItem) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d items vs %d:\n%v\n%v", len(a), len(b), a, b)
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.marker != y.marker || x.e.start != y.e.start || x.e.count != y.e.count || x.e.kind != y.e.kind || !slices.Equal(x.e.sums, y.e.sums) {
			return fmt.Errorf("item %d: %v vs %v", i, x, y)
		}
	}
	return nil
}

// decodedLog is what a logReader made of some records.
type decodedLog struct {
	items   []logItem
	entries int   // entries delivered to fn
	off     int64 // lr.off at the end
	last    byte  // lr.last at the end
	err     error // nil for a clean end (io.EOF)
}

// decodeRecords drives a logReader over recs (the bytes after the header)
// the way layer.replay does, checking every entry it delivers.
func decodeRecords(t *testing.T, recs []byte) decodedLog {
	t.Helper()
	return decodeRecordsOpt(t, recs, true)
}

// decodeRecordsOpt is decodeRecords that only collects the items (copying
// every checksum) if asked.
func decodeRecordsOpt(t *testing.T, recs []byte, collect bool) decodedLog {
	t.Helper()
	var d decodedLog
	lr := &logReader{r: bytes.NewReader(recs), off: logHeaderSize}
	for {
		err := lr.next(func(e logEntry) error {
			checkLogEntry(t, e)
			d.entries++
			if collect {
				d.items = appendItem(d.items, logItem{e: e})
			}
			return nil
		})
		if cap(lr.buf) > maxRecPayload+recTrailerSize {
			t.Fatalf("reader buffer grew to %d bytes", cap(lr.buf))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			d.err = err
			break
		}
		if collect && (lr.last == recOpen || lr.last == recClean) {
			d.items = append(d.items, logItem{marker: lr.last})
		}
	}
	d.off, d.last = lr.off, lr.last
	if d.off < logHeaderSize || d.off > logHeaderSize+int64(len(recs)) {
		t.Fatalf("reader offset %d outside [%d,%d]", d.off, logHeaderSize, logHeaderSize+len(recs))
	}
	if d.err == nil && d.off != logHeaderSize+int64(len(recs)) {
		t.Fatalf("clean end at %d, want %d", d.off, logHeaderSize+len(recs))
	}
	return d
}

// encodeItems renders a canonical stream with logEncoder. Data checksums are
// taken from the items.
func encodeItems(items []logItem) []byte {
	enc := newLogEncoder()
	for _, it := range items {
		if it.marker != 0 {
			enc.marker(it.marker)
			continue
		}
		e := it.e
		enc.extent(e.start, e.count, e.kind, func(b uint64) uint64 { return e.sums[b-e.start] })
	}
	return enc.bytes()
}

// testSum is the checksum seeds and programs use for block b.
func testSum(b uint64) uint64 { return b*0x9e3779b97f4a7c15 ^ 0x5555 }

// logProgram interprets p as encoder operations and returns the encoded
// records together with the canonical stream that was encoded. Each op is
// 6 bytes: op, start (u24 LE), count (u16 LE). op&7 picks data, zero, trim,
// an open or clean marker, or a record boundary; op&0x80 moves start to the
// top of the block space; op&0x40 makes a zero or trim extent huge and, once
// if big is set, a data extent long enough to split across records. Other
// data extents stay under 1024 blocks to keep executions cheap.
func logProgram(p []byte, big bool) ([]byte, []logItem) {
	enc := newLogEncoder()
	var items []logItem
	for ; len(p) >= 6; p = p[6:] {
		op := p[0]
		start := uint64(p[1]) | uint64(p[2])<<8 | uint64(p[3])<<16
		count := uint64(binary.LittleEndian.Uint16(p[4:]))
		if op&0x80 != 0 { // near the end of the block space
			start = maxBlocks - 1 - start%(1<<16)
		}
		var kind uint32
		switch op & 7 {
		case 0, 1:
			kind = kindData
			count %= 1024
			if op&0x40 != 0 && big {
				big = false
				count += maxRecPayload/8 - 100
			}
		case 2:
			kind = kindZero
			if op&0x40 != 0 {
				count <<= 24
			}
		case 3:
			kind = kindTrim
			if op&0x40 != 0 {
				count <<= 32
			}
		case 4:
			enc.marker(recOpen)
			items = append(items, logItem{marker: recOpen})
			continue
		case 5:
			enc.marker(recClean)
			items = append(items, logItem{marker: recClean})
			continue
		default:
			enc.close() // record boundary only
			continue
		}
		count = max(1, min(count, maxBlocks-start))
		e := logEntry{start: start, count: count, kind: kind}
		if kind == kindData {
			e.sums = make([]uint64, count)
			for i := range e.sums {
				e.sums[i] = testSum(start + uint64(i))
			}
		}
		enc.extent(start, count, kind, testSum)
		items = appendItem(items, logItem{e: e})
	}
	return bytes.Clone(enc.bytes()), items
}

// recordEnds returns the end offset (relative to recs) of every record of a
// valid encoding.
func recordEnds(recs []byte) []int {
	var ends []int
	for off := 0; off+recHeaderSize <= len(recs); {
		off += recHeaderSize + int(binary.LittleEndian.Uint32(recs[off:])) + recTrailerSize
		ends = append(ends, off)
	}
	return ends
}

func op6(op byte, start uint32, count uint16) []byte {
	return []byte{op, byte(start), byte(start >> 8), byte(start >> 16), byte(count), byte(count >> 8)}
}

// logSeeds are record streams (without header) for the log targets.
func logSeeds() [][]byte {
	prog := slices.Concat(
		op6(4, 0, 0),      // open marker
		op6(0, 10, 3),     // data
		op6(0, 13, 2),     // data, contiguous: same entry
		op6(2, 100, 50),   // zero
		op6(3, 120, 10),   // trim over part of it
		op6(6, 0, 0),      // record boundary
		op6(0, 5, 1),      // data
		op6(0x82, 0, 1),   // zero at the last block
		op6(0x43, 0, 1),   // huge trim
		op6(5, 0, 0),      // clean marker
		op6(0, 1000, 200), // data after the clean marker
	)
	valid, _ := logProgram(prog, false)
	seeds := [][]byte{nil, valid}
	ends := recordEnds(valid)
	for _, end := range ends[:len(ends)-1] {
		seeds = append(seeds, valid[:end])
	}
	for _, cut := range []int{1, recHeaderSize - 1, recHeaderSize, recHeaderSize + 3, ends[0] + recHeaderSize + entryHeaderSize + 4, len(valid) - 1} {
		seeds = append(seeds, valid[:cut])
	}
	for _, bit := range []int{2, 8*recHeaderSize + 3, 8*ends[1] + 8*recHeaderSize + 8*16, 8*len(valid) - 1} {
		b := bytes.Clone(valid)
		b[bit/8] ^= 1 << (bit % 8)
		seeds = append(seeds, b)
	}
	// Records that carry a correct checksum but bad content.
	rec := func(typ byte, payload []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
		b = append(b, typ)
		b = append(b, payload...)
		return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
	}
	ent := func(start, count uint64, kind byte, nsums int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, start)
		b = binary.LittleEndian.AppendUint64(b, count)
		b = append(b, kind)
		for i := range nsums {
			b = binary.LittleEndian.AppendUint64(b, testSum(start+uint64(i)))
		}
		return b
	}
	seeds = append(seeds,
		rec(recExtents, nil),
		rec(recOpen, []byte{0}),
		rec(9, nil),
		rec(recExtents, ent(1, 0, byte(kindZero), 0)),
		rec(recExtents, ent(maxBlocks, 1, byte(kindZero), 0)),
		rec(recExtents, ent(maxBlocks-1, 2, byte(kindTrim), 0)),
		rec(recExtents, ent(1, 1<<63, byte(kindTrim), 0)),
		rec(recExtents, ent(1, 1, byte(kindNone), 0)),
		rec(recExtents, ent(1, 1, 7, 0)),
		rec(recExtents, ent(1, 3, byte(kindData), 2)),
		rec(recExtents, ent(1, 1<<61, byte(kindData), 1)),
		rec(recExtents, slices.Concat(ent(1, 2, byte(kindData), 2), []byte{1, 2, 3})),
		slices.Concat(rec(recOpen, nil), rec(recExtents, ent(7, 1, byte(kindData), 1)), rec(recExtents, ent(8, 1, byte(kindZero), 0))),
		// Length fields past the cap, at the cap, and a zeroed tail (a
		// crash after the file grew but before the data landed).
		[]byte{0xff, 0xff, 0xff, 0xff, recExtents},
		binary.LittleEndian.AppendUint32(nil, maxRecPayload+1),
		append(binary.LittleEndian.AppendUint32(nil, maxRecPayload), recExtents, 0, 0, 0),
		append(bytes.Clone(valid), make([]byte, 40)...),
	)
	return seeds
}

func FuzzLogRecords(f *testing.F) {
	for _, s := range logSeeds() {
		f.Add(s)
	}
	// A data extent that splits across records, behind a partly filled one.
	big, _ := logProgram(slices.Concat(op6(0, 0, 10), op6(2, 20, 5), op6(0x40, 100, 5)), true)
	f.Add(big)

	f.Fuzz(func(t *testing.T, recs []byte) {
		d := decodeRecords(t, recs)
		if d.err != nil {
			if !errors.Is(d.err, errTorn) && !errors.Is(d.err, ErrCorrupt) {
				t.Fatalf("error %q wraps neither errTorn nor ErrCorrupt", d.err)
			}
			checkDecodeErr(t, "logReader.next", d.err, errTorn, ErrCorrupt)
		}
		if errors.Is(d.err, errTorn) {
			// A torn record delivers nothing: the good prefix reads back
			// cleanly and yields exactly what was delivered.
			p := decodeRecords(t, recs[:d.off-logHeaderSize])
			if p.err != nil {
				t.Fatalf("good prefix [:%d] fails: %v", d.off, p.err)
			}
			if err := itemsEqual(p.items, d.items); err != nil {
				t.Fatalf("good prefix decodes differently: %v", err)
			}
		}
		if d.err != nil {
			return
		}
		// Round trip decode -> encode -> decode.
		re := encodeItems(d.items)
		d2 := decodeRecords(t, re)
		if d2.err != nil {
			t.Fatalf("re-encoded log does not decode: %v", d2.err)
		}
		if err := itemsEqual(d.items, d2.items); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// checkLogEntry fails t unless e is an entry the log may hold: blocks in
// range, a known kind, one checksum per block of a data entry and none
// otherwise.
func checkLogEntry(t *testing.T, e logEntry) {
	t.Helper()
	if e.count == 0 || e.start >= maxBlocks || e.count > maxBlocks-e.start {
		t.Fatalf("entry [%d,+%d) out of range", e.start, e.count)
	}
	switch e.kind {
	case kindData:
		if uint64(len(e.sums)) != e.count {
			t.Fatalf("data entry of %d blocks with %d sums", e.count, len(e.sums))
		}
	case kindZero, kindTrim:
		if e.sums != nil {
			t.Fatalf("kind %d entry with sums", e.kind)
		}
	default:
		t.Fatalf("entry with kind %d", e.kind)
	}
}

// FuzzDecodeExtents reaches decodeExtents directly: in FuzzLogRecords a
// mutated payload almost never passes the record checksum in front of it.
// Whatever it accepts is in range, of a known kind, with one checksum per
// block of a data entry, and encodes back to the input.
func FuzzDecodeExtents(f *testing.F) {
	ent := func(start, count uint64, kind byte, sums ...uint64) []byte {
		b := binary.LittleEndian.AppendUint64(nil, start)
		b = binary.LittleEndian.AppendUint64(b, count)
		b = append(b, kind)
		for _, x := range sums {
			b = binary.LittleEndian.AppendUint64(b, x)
		}
		return b
	}
	f.Add([]byte{})
	f.Add(ent(1, 2, byte(kindData), 7, 8))
	f.Add(slices.Concat(ent(0, 1, byte(kindZero)), ent(5, 3, byte(kindTrim)), ent(9, 1, byte(kindData), 1)))
	f.Add(ent(maxBlocks-1, 2, byte(kindTrim)))
	f.Add(ent(1, 1<<61, byte(kindData), 1))
	f.Add(ent(1, 1, byte(kindNone)))
	f.Add(slices.Concat(ent(1, 1, byte(kindZero)), []byte{1, 2}))
	f.Fuzz(func(t *testing.T, p []byte) {
		var buf []uint64
		var re []byte
		err := decodeExtents(p, &buf, func(e logEntry) error {
			checkLogEntry(t, e)
			re = append(re, ent(e.start, e.count, byte(e.kind), e.sums...)...)
			return nil
		})
		if err != nil {
			checkDecodeErr(t, "decodeExtents", err, ErrCorrupt)
			return
		}
		if !bytes.Equal(re, p) {
			t.Fatalf("accepted payload does not encode back to itself")
		}
	})
}

// FuzzLogEncoder checks the other direction: whatever logEncoder writes
// decodes to what it was given, every truncation of it is a clean prefix or
// a torn record (never corruption, which would fail a head layer's open),
// and any single flipped bit is caught as a torn record at the damaged one.
func FuzzLogEncoder(f *testing.F) {
	f.Add(slices.Concat(op6(4, 0, 0), op6(0, 10, 3), op6(2, 100, 50), op6(5, 0, 0)), uint16(0))
	f.Add(slices.Concat(op6(0, 0, 10), op6(6, 0, 0), op6(0, 10, 10), op6(1, 20, 1)), uint16(100))
	f.Add(slices.Concat(op6(0x80, 0, 1), op6(0x81, 1, 2), op6(0xc2, 5, 1), op6(0x43, 0, 0xffff)), uint16(7))
	f.Add(slices.Concat(op6(2, 0, 8), op6(0x40, 8, 3), op6(3, 8, 1)), uint16(8*1000+3))

	f.Fuzz(func(t *testing.T, prog []byte, flip uint16) {
		if len(prog) > 6*32 {
			prog = prog[:6*32]
		}
		recs, want := logProgram(prog, true)
		d := decodeRecords(t, recs)
		if d.err != nil {
			t.Fatalf("encoder output does not decode: %v", d.err)
		}
		if err := itemsEqual(want, d.items); err != nil {
			t.Fatalf("encode/decode: %v", err)
		}
		ends := recordEnds(recs)
		if len(recs) > 0 && (len(ends) == 0 || ends[len(ends)-1] != len(recs)) {
			t.Fatalf("record ends %v do not tile %d bytes", ends, len(recs))
		}
		for i, end := range ends {
			start := 0
			if i > 0 {
				start = ends[i-1]
			}
			if n := end - start - recHeaderSize - recTrailerSize; n > maxRecPayload {
				t.Fatalf("record at %d: %d-byte payload exceeds %d", start, n, maxRecPayload)
			}
		}
		// Truncations: every cut in small logs, a few around each record
		// boundary in big ones. The records before a cut were checked
		// above, so each cut decodes from the record boundary before it.
		var cuts []int
		if len(recs) <= 512 {
			for i := range len(recs) {
				cuts = append(cuts, i)
			}
		} else {
			for _, end := range ends {
				cuts = append(cuts, end-1, end, end+1, end+recHeaderSize, end+recHeaderSize+entryHeaderSize+3)
			}
		}
		for _, cut := range cuts {
			if cut <= 0 || cut > len(recs) {
				continue
			}
			i, boundary := slices.BinarySearch(ends, cut) // ends[i] >= cut
			from := 0
			if i > 0 {
				from = ends[i-1]
			}
			p := decodeRecordsOpt(t, recs[from:cut], false)
			switch {
			case boundary && p.err != nil:
				t.Fatalf("cut at record boundary %d: %v", cut, p.err)
			case !boundary && !errors.Is(p.err, errTorn):
				t.Fatalf("cut inside a record at %d: got %v, want a torn record", cut, p.err)
			case !boundary && errors.Is(p.err, ErrCorrupt):
				t.Fatalf("cut inside a record at %d reported as corruption: %v", cut, p.err)
			case !boundary && p.off != logHeaderSize:
				t.Fatalf("cut inside the record at %d: good prefix ends %d bytes into it", from, p.off-logHeaderSize)
			}
		}
		// One flipped bit.
		if len(recs) == 0 {
			return
		}
		bit := int(flip) % (8 * len(recs))
		b := bytes.Clone(recs)
		b[bit/8] ^= 1 << (bit % 8)
		p := decodeRecordsOpt(t, b, false)
		if !errors.Is(p.err, errTorn) {
			t.Fatalf("bit %d flipped: got %v, want a torn record", bit, p.err)
		}
		recStart := 0
		for _, end := range ends {
			if end > bit/8 {
				break
			}
			recStart = end
		}
		if p.off != logHeaderSize+int64(recStart) {
			t.Fatalf("bit %d flipped: good prefix ends at %d, want %d", bit, p.off, logHeaderSize+recStart)
		}
	})
}

// ---------------------------------------------------------------------------
// Whole layer logs through openLayer

func FuzzOpenLayerLog(f *testing.F) {
	for _, s := range logSeeds() {
		f.Add(true, s)
	}
	h := encodeLogHeader(fuzzLayer)
	f.Add(false, []byte{})
	f.Add(false, h[:20])
	f.Add(false, h)
	f.Add(false, encodeLogHeader(fuzzLayer+1))
	v2 := bytes.Clone(h)
	binary.LittleEndian.PutUint32(v2[8:], 2)
	binary.LittleEndian.PutUint64(v2[24:], xxhash.Sum64(v2[:24]))
	f.Add(false, v2)
	f.Add(false, slices.Concat(h, logSeeds()[1]))

	// One directory per fuzz worker process, reused by every iteration.
	dir := f.TempDir()
	dataPath, logPath := layerPaths(dir, fuzzLayer)
	if err := os.WriteFile(dataPath, make([]byte, 4*BlockSize), 0o600); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, withHeader bool, b []byte) {
		file := b
		if withHeader {
			file = slices.Concat(encodeLogHeader(fuzzLayer), b)
		}
		write := func() {
			if err := os.WriteFile(logPath, file, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// What the decoders say, independently of openLayer.
		hdrErr := decodeLogHeader(file, fuzzLayer)
		var d decodedLog
		if hdrErr == nil {
			d = decodeRecords(t, file[logHeaderSize:])
		}
		// The cases: a head, where a torn record is a tail to cut unless a
		// valid record follows it; and a sealed layer whose metadata
		// commits the whole file, only its header, or more than the file.
		type openCase struct {
			role      string
			committed int64
			tornOK    bool // a torn record is cut rather than refused
		}
		torn := hdrErr == nil && errors.Is(d.err, errTorn)
		cases := []openCase{
			{"head", -1, torn && !validAfterRef(t, file, d.off)},
			{"sealed, all committed", int64(len(file)), false},
			{"sealed, header committed", logHeaderSize, torn},
			{"sealed, more committed than the file", int64(len(file)) + 1, false},
		}
		for _, c := range cases {
			write()
			l, clean, err := openLayerNoPanic(t, dir, fuzzLayer, c.committed)
			after, rerr := os.ReadFile(logPath)
			if rerr != nil {
				t.Fatal(rerr)
			}
			short := c.committed > int64(len(file))
			switch {
			case hdrErr != nil || (d.err != nil && !c.tornOK) || short:
				if err == nil {
					l.close()
					t.Fatalf("%s: opened despite damage: header %v, records %v", c.role, hdrErr, d.err)
				}
				checkDecodeErr(t, "openLayer", err, ErrCorrupt, ErrUnsupportedFormat)
				if !errors.Is(err, ErrCorrupt) && !errors.Is(hdrErr, ErrUnsupportedFormat) {
					t.Fatalf("%s: damaged log: %v does not wrap ErrCorrupt", c.role, err)
				}
				if !bytes.Equal(after, file) {
					t.Fatalf("%s: a layer that failed to open had its log changed (%d -> %d bytes)", c.role, len(file), len(after))
				}
				continue
			case err != nil:
				t.Fatalf("%s (records: %v): %v", c.role, d.err, err)
			}
			if want := file[:d.off]; !bytes.Equal(after, want) {
				t.Fatalf("%s: log is %d bytes after open, want its %d-byte good prefix", c.role, len(after), len(want))
			}
			if d.err != nil && clean {
				t.Fatalf("%s: torn log reported as cleanly closed", c.role)
			}
			checkOpened(t, l, clean, d, d.off)
			runs := l.m.runs()

			// Reopening the repaired log finds it intact and maps the same.
			l2, clean2, err := openLayerNoPanic(t, dir, fuzzLayer, min(c.committed, d.off))
			if err != nil {
				t.Fatalf("%s: reopen after cutting the torn tail: %v", c.role, err)
			}
			// The first open of a torn log reports it unclean even when the
			// good prefix ends with a clean-close record; once the tail is
			// cut, that record is the end of the log.
			if want := d.last == recClean; clean2 != want {
				l2.close()
				t.Fatalf("%s: reopen: clean %v, want %v", c.role, clean2, want)
			}
			if got := l2.m.runs(); !slices.Equal(got, runs) {
				l2.close()
				t.Fatalf("%s: reopen: map %v, first open %v", c.role, got, runs)
			}
			l2.close()
		}
	})
}

// validAfterRef says whether, in a whole log file, the damaged record at
// off is followed (by its length field) by a record that decodes cleanly:
// the rule of FORMAT.md "Torn tails", computed with the test's decoder.
func validAfterRef(t *testing.T, file []byte, off int64) bool {
	t.Helper()
	if off+recHeaderSize > int64(len(file)) {
		return false
	}
	n := int64(binary.LittleEndian.Uint32(file[off:]))
	if n > maxRecPayload {
		return false
	}
	next := off + recHeaderSize + n + recTrailerSize
	if next >= int64(len(file)) {
		return false
	}
	return decodeRecordsOpt(t, file[next:], false).off > logHeaderSize
}

const fuzzLayer layerID = 0xabcdef

// openLayerNoPanic calls openLayer, turning a panic into a test failure so
// one bad input does not take down the whole test binary.
func openLayerNoPanic(t *testing.T, dir string, id layerID, committed int64) (l *layer, clean bool, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("openLayer(committed=%d) panicked: %v\n%s", committed, r, debug.Stack())
		}
	}()
	return openLayer(dir, id, committed)
}

// checkOpened closes l after checking it against what the decoders said.
func checkOpened(t *testing.T, l *layer, clean bool, d decodedLog, size int64) {
	t.Helper()
	defer l.close()
	if l.logSize != size {
		t.Fatalf("logSize %d, want %d", l.logSize, size)
	}
	if want := d.err == nil && d.last == recClean; clean != want {
		t.Fatalf("clean %v, want %v", clean, want)
	}
	want := newExtMap()
	for _, it := range d.items {
		if it.marker == 0 {
			want.set(it.e.start, it.e.count, it.e.kind)
		}
	}
	if got, w := l.m.runs(), want.runs(); !slices.Equal(got, w) {
		t.Fatalf("map %v, want %v", got, w)
	}
}

// ---------------------------------------------------------------------------
// Extent map

// FuzzExtMap applies a sequence of set/clear ops to an extMap and to a
// plain array, over a small window of block numbers placed at the bottom,
// the middle or the top of the block space, and checks every query and
// invariant after each op. Each op is 4 bytes: op/val, start (9 bits), n.
func FuzzExtMap(f *testing.F) {
	f.Add(byte(0), []byte{1, 0, 0, 10, 1, 10, 0, 10, 2, 5, 0, 3, 0, 6, 0, 1})
	f.Add(byte(1), []byte{1, 0, 0, 255, 1, 255, 0, 255, 1, 254, 1, 2, 0, 100, 0, 50, 3, 90, 0, 70})
	f.Add(byte(2), []byte{2, 0xff, 1, 1, 2, 0xfe, 1, 1, 3, 0xfd, 1, 1, 0, 0xfe, 1, 1, 2, 0xfe, 1, 1})
	f.Add(byte(0), []byte{3, 8, 0, 8, 3, 24, 0, 8, 3, 16, 0, 8, 0, 12, 0, 16, 1, 0, 0, 40, 0, 0, 0, 0})

	const space = 512
	f.Fuzz(func(t *testing.T, where byte, ops []byte) {
		if len(ops) > 4*48 { // keep executions (and minimization) cheap
			ops = ops[:4*48]
		}
		base := [...]uint64{0, 1 << 40, maxBlocks - space}[where%3]
		m := newExtMap()
		var model [space]uint32
		for i := 0; len(ops) >= 4; ops, i = ops[4:], i+1 {
			val := uint32(ops[0] % 4)
			start := uint64(ops[1]) | uint64(ops[2]&1)<<8
			n := min(uint64(ops[3]), space-start)
			if val == 0 {
				m.clear(base+start, n)
			} else {
				m.set(base+start, n, val)
			}
			for b := start; b < start+n; b++ {
				model[b] = val
			}
			desc := fmt.Sprintf("op %d (val %d, [%d,+%d))", i, val, start, n)
			checkExtMap(t, desc, m, base, model[:])
			// A range query around the op, stopping early half the time.
			lo, hi := start-min(start, uint64(ops[2]>>1)), min(space, start+n+uint64(ops[2]>>4))
			checkAscend(t, desc, m, base, model[:], lo, hi, int(ops[0]>>2)%4)
		}
	})
}

func checkExtMap(t *testing.T, desc string, m *extMap, base uint64, model []uint32) {
	t.Helper()
	space := uint64(len(model))
	// Runs: sorted, non-empty, disjoint, merged, inside the window.
	runs := m.runs()
	if len(runs) != m.len() {
		t.Fatalf("%s: len %d, %d runs", desc, m.len(), len(runs))
	}
	for i, r := range runs {
		if r.n == 0 || r.val == 0 || r.start < base || r.end() > base+space {
			t.Fatalf("%s: bad run %+v", desc, r)
		}
		if i > 0 {
			p := runs[i-1]
			if p.end() > r.start {
				t.Fatalf("%s: runs %+v and %+v overlap or are unsorted", desc, p, r)
			}
			if p.end() == r.start && p.val == r.val {
				t.Fatalf("%s: runs %+v and %+v should have been merged", desc, p, r)
			}
		}
	}
	// find for every block, and just outside the window.
	for b := uint64(0); b < space; b++ {
		r, ok := m.find(base + b)
		if ok != (model[b] != 0) || (ok && (r.val != model[b] || r.start > base+b || r.end() <= base+b)) {
			t.Fatalf("%s: find(%d) = %+v, %v; model %d", desc, b, r, ok, model[b])
		}
	}
	if base > 0 {
		if r, ok := m.find(base - 1); ok {
			t.Fatalf("%s: find below the window = %+v", desc, r)
		}
	}
	if r, ok := m.find(base + space); ok {
		t.Fatalf("%s: find above the window = %+v", desc, r)
	}
	checkAscend(t, desc, m, base, model, 0, space, 0)
	// covers over every maximal uniform stretch, its last block, one block
	// beyond it, and with another value.
	for s := uint64(0); s < space; {
		e := s + 1
		for e < space && model[e] == model[s] {
			e++
		}
		v, other := model[s], model[s]%3+1
		if got, want := m.covers(base+s, base+e, max(v, 1)), v != 0; got != want {
			t.Fatalf("%s: covers([%d,%d), %d) = %v, want %v", desc, s, e, max(v, 1), got, want)
		}
		if got, want := m.covers(base+e-1, base+e, max(v, 1)), v != 0; got != want {
			t.Fatalf("%s: covers([%d,%d), %d) = %v, want %v", desc, e-1, e, max(v, 1), got, want)
		}
		if m.covers(base+s, base+e, other) {
			t.Fatalf("%s: covers([%d,%d), %d) = true, model holds %d", desc, s, e, other, v)
		}
		if e < space && v != 0 && m.covers(base+s, base+e+1, v) {
			t.Fatalf("%s: covers([%d,%d), %d) = true past a change", desc, s, e+1, v)
		}
		s = e
	}
}

// checkAscend compares ascend over [lo, hi) with the model; with stop > 0
// it returns false after that many runs and checks ascend stops there.
func checkAscend(t *testing.T, desc string, m *extMap, base uint64, model []uint32, lo, hi uint64, stop int) {
	t.Helper()
	var got []run
	m.ascend(base+lo, base+hi, func(r run) bool {
		got = append(got, r)
		return stop == 0 || len(got) < stop
	})
	var want []run
	for b := lo; b < hi; b++ {
		if model[b] == 0 {
			continue
		}
		if k := len(want) - 1; k >= 0 && want[k].end() == base+b && want[k].val == model[b] {
			want[k].n++
			continue
		}
		want = append(want, run{start: base + b, n: 1, val: model[b]})
	}
	if stop > 0 && len(want) > stop {
		want = want[:stop]
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: ascend([%d,%d)) stop %d = %v, want %v", desc, lo, hi, stop, got, want)
	}
}
