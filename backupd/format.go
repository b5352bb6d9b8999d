package backupd

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// The on-target formats; FORMAT.md documents every byte.
const (
	// ChunkSize is the chunk size of backups this version writes.
	ChunkSize = 8 << 10
	// PageChunks is the number of chunk entries in a full map page of a
	// backup written now (8 MiB of volume); an incremental keeps its
	// parent's (256 before this). Readers take any size in 1..4096 that the
	// manifest declares.
	PageChunks = 1024
	// MaxChunkSize bounds the chunk size a manifest may declare.
	MaxChunkSize = 1 << 20
	// DefaultPackSize is the size at which a pack is closed and uploaded.
	DefaultPackSize = 16 << 20

	recordMagic      = "SBC1"
	recordHeaderSize = 24
	flagCompressed   = 1
	flagEncrypted    = 2
	flagLeafID       = 4 // encrypted only: id = HMAC(id key, SHA-256(plaintext))
	nonceSize        = 12
	tagSize          = 16

	indexMagic     = "SBI1"
	indexHeadSize  = 4 + 4 + 4 + 32
	indexEntrySize = 32 + 4 + 4
	maxIndexCount  = 1 << 22

	pageMagic         = "SBM1"
	pageSealedMagic   = "SBME"
	pageHeadSize      = 4 + 1 + 1 + 2 + 4 + 16
	pageFlagLeaves    = 1
	maxPageObjectSize = pageHeadSize + 64*4096 + 4 + nonceSize + tagSize
)

// ChunkID names a chunk: SHA-256 of its plaintext, or HMAC-SHA-256 under
// the repository's id key when encrypted. The zero ChunkID marks a zero
// chunk in a map page (no hash output is all zeros in practice).
type ChunkID [32]byte

// String returns the id as 64 lowercase hex digits.
func (c ChunkID) String() string { return hex.EncodeToString(c[:]) }

// IsZero reports whether c is the zero-chunk marker.
func (c ChunkID) IsZero() bool { return c == ChunkID{} }

// ParseChunkID parses 64 lowercase hex digits.
func ParseChunkID(s string) (ChunkID, error) {
	var c ChunkID
	if err := parseHex(s, c[:]); err != nil {
		return c, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return c, nil
}

// parseHex decodes exactly len(dst) bytes of lowercase hex.
func parseHex(s string, dst []byte) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("want %d hex digits, have %d: %w", 2*len(dst), len(s), ErrCorrupt)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("byte %#02x at %d is not a lowercase hex digit: %w", c, i, ErrCorrupt)
		}
	}
	_, err := hex.Decode(dst, []byte(s))
	return err
}

// chunkID computes the id a new record of plaintext p gets: its SHA-256,
// or when encrypted the HMAC-SHA-256 of that under the id key (flagLeafID).
func chunkID(k *Key, p []byte) ChunkID {
	id, _ := chunkIDs(k, p)
	return id
}

// chunkIDs returns the id a new record of plaintext p gets and its leaf
// (the SHA-256 of p) with one pass over p.
func chunkIDs(k *Key, p []byte) (id, leaf ChunkID) {
	leaf = sha256.Sum256(p)
	if k == nil {
		return leaf, leaf
	}
	return leafID(k, leaf), leaf
}

// leafID is the id of an encrypted chunk whose plaintext has SHA-256 leaf
// (records with flagLeafID): HMAC-SHA-256(id key, leaf).
func leafID(k *Key, leaf ChunkID) ChunkID {
	h := getIDHash(k)
	h.h.Write(leaf[:])
	var c ChunkID
	h.h.Sum(c[:0])
	putIDHash(h)
	return c
}

// legacyID is the id of an encrypted chunk in a record without
// flagLeafID (written before it existed): HMAC-SHA-256(id key, plaintext).
func legacyID(k *Key, p []byte) ChunkID {
	h := getIDHash(k)
	h.h.Write(p)
	var c ChunkID
	h.h.Sum(c[:0])
	putIDHash(h)
	return c
}

// idHash is a reusable HMAC under one key's id key (hmac.New costs as
// much as hashing a leaf).
type idHash struct {
	k *Key
	h hash.Hash
}

var idHashes sync.Pool

func getIDHash(k *Key) *idHash {
	if h, ok := idHashes.Get().(*idHash); ok && h.k == k {
		h.h.Reset()
		return h
	}
	return &idHash{k: k, h: k.idHash()}
}

func putIDHash(h *idHash) { idHashes.Put(h) }

// codec holds the shared zstd encoder and decoder; both are safe for
// concurrent EncodeAll/DecodeAll.
type codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

var sharedCodec = sync.OnceValue(func() *codec {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(4), zstd.WithLowerEncoderMem(true))
	if err != nil {
		panic(err) // only for invalid options, which are constant
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxMemory(4*MaxChunkSize), zstd.WithDecoderMaxWindow(4*MaxChunkSize), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		panic(err)
	}
	return &codec{enc: enc, dec: dec}
})

// recordScratch is a goroutine's reusable buffer for compressing chunks.
type recordScratch struct {
	comp []byte
}

// encodeRecord appends the chunk record for plaintext p with id id to dst.
// When encrypted, id must be leafID of p's SHA-256 (chunkID).
func encodeRecord(dst []byte, k *Key, id ChunkID, p []byte) []byte {
	return encodeRecordScratch(dst, k, id, p, nil)
}

// maxRecordSize is the largest record of a chunk of n bytes: the payload
// is never longer than the plaintext (compressed only if shorter).
func maxRecordSize(n int) int { return recordHeaderSize + nonceSize + 8 + n + tagSize }

// encodeRecordScratch is encodeRecord with a scratch buffer (nil: none).
// It allocates nothing when dst has room for maxRecordSize(len(p)).
func encodeRecordScratch(dst []byte, k *Key, id ChunkID, p []byte, s *recordScratch) []byte {
	body, flags := p, byte(0)
	if !looksIncompressible(p) {
		var buf []byte
		if s != nil {
			buf = s.comp[:0]
		}
		z := sharedCodec().enc.EncodeAll(p, buf)
		if s != nil {
			s.comp = z[:0] // keep the grown buffer
		}
		if len(z) < len(p) {
			body, flags = z, flagCompressed
		}
	}
	sum := xxhash.Sum64(p)
	var h [recordHeaderSize]byte
	copy(h[:], recordMagic)
	h[4] = 1
	payload := len(body)
	if k != nil {
		flags |= flagEncrypted | flagLeafID
		payload = nonceSize + 8 + len(body) + tagSize
	} else {
		binary.LittleEndian.PutUint64(h[16:], sum)
	}
	h[5] = flags
	binary.LittleEndian.PutUint32(h[8:], uint32(len(p)))
	binary.LittleEndian.PutUint32(h[12:], uint32(payload))
	dst = slices.Grow(dst, recordHeaderSize+payload)
	dst = append(dst, h[:]...)
	if k == nil {
		return append(dst, body...)
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	dst = append(dst, nonce[:]...)
	// Seal in place: the inner plaintext is laid out where the ciphertext
	// goes (dst has room for the tag).
	at := len(dst)
	dst = binary.LittleEndian.AppendUint64(dst, sum)
	dst = append(dst, body...)
	var aad [32 + 16]byte
	copy(aad[:], id[:])
	copy(aad[32:], h[:16])
	sealed := k.aead.Seal(dst[at:at], nonce[:], dst[at:], aad[:])
	return dst[:at+len(sealed)]
}

// looksIncompressible reports whether chunk p is not worth compressing:
// its bytes, sampled every 8th, are so close to uniformly distributed
// (chi-square against uniform below 400 with 255 degrees of freedom: with
// the 1024 samples of an 8 KiB chunk, a Rényi entropy above about 7.5
// bits per byte) that entropy coding could save only a few percent. It
// misses only redundancy made of repeated high-entropy strings inside one
// chunk (rare on volumes), and costs a fraction of a zstd attempt. Random
// data (mean 255, standard deviation 23) passes with overwhelming
// probability.
func looksIncompressible(p []byte) bool {
	const stride = 8
	n := len(p) / stride
	if n < 1024 { // fewer than 4 expected per byte value: too few to tell
		return false
	}
	var h0, h1, h2, h3 [256]uint32
	i := 0
	for ; i+4*stride <= n*stride; i += 4 * stride {
		h0[p[i]]++
		h1[p[i+stride]]++
		h2[p[i+2*stride]]++
		h3[p[i+3*stride]]++
	}
	m := i / stride
	for ; m < n; m++ {
		h0[p[m*stride]]++
	}
	var sq uint64
	for v := range 256 {
		c := uint64(h0[v] + h1[v] + h2[v] + h3[v])
		sq += c * c
	}
	// chi2 = 256*sq/n - n < 400
	return 256*sq < uint64(400+n)*uint64(n)
}

// decodeRecord checks chunk record rec, stored under id, and returns its
// plaintext, at most maxPlain bytes. Every check failure wraps ErrCorrupt
// (or ErrKey for an encryption mismatch) and names the chunk.
func decodeRecord(rec []byte, k *Key, id ChunkID, maxPlain int) ([]byte, error) {
	p, _, err := decodeRecordScratch(rec, k, id, maxPlain, nil)
	return p, err
}

// decodeScratch is a goroutine's reusable buffers for decodeRecordScratch.
type decodeScratch struct {
	inner, plain []byte
}

// decodeRecordScratch is decodeRecord that also returns the plaintext's
// SHA-256 when it computed it on the way (zero otherwise: a record without
// flagLeafID in an encrypted backup). With a scratch (non-nil s) the
// plaintext may alias rec or s and is valid until s is used again;
// otherwise it is a new slice.
func decodeRecordScratch(rec []byte, k *Key, id ChunkID, maxPlain int, s *decodeScratch) ([]byte, ChunkID, error) {
	var leaf ChunkID
	bad := func(format string, a ...any) error {
		return fmt.Errorf("chunk %s: "+format+": %w", append([]any{id}, append(a, ErrCorrupt)...)...)
	}
	if len(rec) < recordHeaderSize {
		return nil, leaf, bad("record of %d bytes is shorter than its header", len(rec))
	}
	h := rec[:recordHeaderSize]
	if string(h[:4]) != recordMagic {
		return nil, leaf, bad("bad magic %q", h[:4])
	}
	if h[4] != 1 {
		return nil, leaf, bad("unknown record version %d", h[4])
	}
	flags := h[5]
	if flags&^(flagCompressed|flagEncrypted|flagLeafID) != 0 || h[6] != 0 || h[7] != 0 {
		return nil, leaf, bad("unknown flags %#x/%#x%02x", flags, h[6], h[7])
	}
	plainLen := int(binary.LittleEndian.Uint32(h[8:]))
	payload := int(binary.LittleEndian.Uint32(h[12:]))
	sum := binary.LittleEndian.Uint64(h[16:])
	if plainLen == 0 || plainLen > maxPlain {
		return nil, leaf, bad("plaintext length %d not in 1..%d", plainLen, maxPlain)
	}
	if payload != len(rec)-recordHeaderSize {
		return nil, leaf, bad("payload length %d, record holds %d", payload, len(rec)-recordHeaderSize)
	}
	body := rec[recordHeaderSize:]
	encrypted := flags&flagEncrypted != 0
	switch {
	case flags&flagLeafID != 0 && !encrypted:
		return nil, leaf, bad("leaf-id flag on an unencrypted record")
	case encrypted && k == nil:
		return nil, leaf, fmt.Errorf("chunk %s is encrypted and no key was given: %w", id, ErrKey)
	case !encrypted && k != nil:
		return nil, leaf, bad("not encrypted in an encrypted backup")
	case encrypted:
		if len(body) < nonceSize+8+tagSize || sum != 0 {
			return nil, leaf, bad("encrypted payload of %d bytes is too short or header hash set", len(body))
		}
		var dst []byte
		if s != nil {
			dst = s.inner[:0]
		}
		var aad [32 + 16]byte
		copy(aad[:], id[:])
		copy(aad[32:], h[:16])
		inner, err := k.aead.Open(dst, body[:nonceSize], body[nonceSize:], aad[:])
		if err != nil {
			return nil, leaf, bad("authentication failed (wrong key or damaged data)")
		}
		if s != nil {
			s.inner = inner[:0]
		}
		sum, body = binary.LittleEndian.Uint64(inner), inner[8:]
	}
	p := body
	if flags&flagCompressed != 0 {
		// dst's capacity is the declared plaintext length: the decoder
		// (WithDecodeAllCapLimit) fails a frame that would grow past it
		// instead of decompressing it whole.
		var dst []byte
		if s != nil && cap(s.plain) >= plainLen {
			dst = s.plain[:0:plainLen]
		} else {
			dst = make([]byte, 0, plainLen)
		}
		out, err := sharedCodec().dec.DecodeAll(body, dst)
		if err != nil {
			return nil, leaf, bad("zstd: %v", err)
		}
		if s != nil && cap(s.plain) < plainLen {
			s.plain = out[:0]
		}
		p = out
	} else if s == nil && !encrypted {
		p = bytes.Clone(body)
	}
	if len(p) != plainLen {
		return nil, leaf, bad("plaintext is %d bytes, header says %d", len(p), plainLen)
	}
	if got := xxhash.Sum64(p); got != sum {
		return nil, leaf, bad("xxhash %016x, header says %016x", got, sum)
	}
	var got ChunkID
	switch {
	case k == nil:
		leaf = sha256.Sum256(p)
		got = leaf
	case flags&flagLeafID != 0:
		leaf = sha256.Sum256(p)
		got = leafID(k, leaf)
	default:
		got = legacyID(k, p)
	}
	if got != id {
		return nil, ChunkID{}, bad("content hashes to %s", got)
	}
	return p, leaf, nil
}

// randomBytes returns n bytes from crypto/rand.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return b
}

// indexEntry locates one chunk record inside a pack.
type indexEntry struct {
	ID     ChunkID
	Offset uint32
	Length uint32
}

// encodeIndex encodes the index object of pack.
func encodeIndex(pack ChunkID, entries []indexEntry) []byte {
	b := make([]byte, 0, indexHeadSize+indexEntrySize*len(entries)+8)
	b = append(b, indexMagic...)
	b = append(b, 1, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	b = append(b, pack[:]...)
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, e.Offset)
		b = binary.LittleEndian.AppendUint32(b, e.Length)
	}
	return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
}

// decodeIndex checks and decodes the index object stored for pack.
func decodeIndex(b []byte, pack ChunkID) ([]indexEntry, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("index of pack %s: "+format+": %w", append([]any{pack}, append(a, ErrCorrupt)...)...)
	}
	if len(b) < indexHeadSize+8 {
		return nil, bad("%d bytes is too short", len(b))
	}
	if string(b[:4]) != indexMagic || b[4] != 1 || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, bad("bad magic or version % x", b[:8])
	}
	n := int(binary.LittleEndian.Uint32(b[8:]))
	if n > maxIndexCount || len(b) != indexHeadSize+indexEntrySize*n+8 {
		return nil, bad("%d entries do not fit %d bytes", n, len(b))
	}
	if got, want := xxhash.Sum64(b[:len(b)-8]), binary.LittleEndian.Uint64(b[len(b)-8:]); got != want {
		return nil, bad("xxhash %016x, trailer says %016x", got, want)
	}
	if !bytes.Equal(b[12:44], pack[:]) {
		return nil, bad("names pack %x", b[12:44])
	}
	out := make([]indexEntry, n)
	var end uint64
	for i := range out {
		e := b[indexHeadSize+i*indexEntrySize:]
		copy(out[i].ID[:], e[:32])
		out[i].Offset = binary.LittleEndian.Uint32(e[32:])
		out[i].Length = binary.LittleEndian.Uint32(e[36:])
		if uint64(out[i].Offset) < end || out[i].Length < recordHeaderSize || out[i].Length > recordHeaderSize+nonceSize+8+tagSize+MaxChunkSize+MaxChunkSize/8 {
			return nil, bad("entry %d (chunk %s) at %d+%d overlaps or has a bad length", i, out[i].ID, out[i].Offset, out[i].Length)
		}
		if out[i].ID.IsZero() {
			return nil, bad("entry %d has the zero chunk id", i)
		}
		end = uint64(out[i].Offset) + uint64(out[i].Length)
	}
	return out, nil
}

// page is a decoded map page: the chunk ids of up to PageChunks
// consecutive chunks and, in encrypted backups, their plaintext SHA-256
// ("leaves" of the volume digest).
type page struct {
	IDs    []ChunkID
	Leaves []ChunkID // nil unless encrypted
}

// leaf is chunk c's leaf, the SHA-256 of its plaintext: the id itself in
// an unencrypted page (zero for a zero chunk either way).
func (p *page) leaf(c int) ChunkID {
	if p.Leaves != nil {
		return p.Leaves[c]
	}
	return p.IDs[c]
}

// encodePage encodes p with a random salt (so a page written again never
// has the key of an older copy that GC may be deleting; FORMAT.md,
// "Garbage collection"), sealed with a key. It returns the object and its
// id, the SHA-256 of the object.
func encodePage(p page, k *Key) ([]byte, ChunkID) {
	b := make([]byte, 0, pageHeadSize+64*len(p.IDs))
	b = append(b, pageMagic...)
	flags := byte(0)
	if p.Leaves != nil {
		flags = pageFlagLeaves
	}
	b = append(b, 1, flags, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.IDs)))
	b = append(b, randomBytes(16)...)
	for i, id := range p.IDs {
		b = append(b, id[:]...)
		if p.Leaves != nil {
			b = append(b, p.Leaves[i][:]...)
		}
	}
	if k != nil {
		nonce := randomBytes(nonceSize)
		sealed := append([]byte(pageSealedMagic), nonce...)
		b = k.mapAEAD.Seal(sealed, nonce, b, []byte(pageSealedMagic))
	}
	return b, sha256.Sum256(b)
}

// decodePage checks object b stored as page id and decodes it. want is the
// number of entries the manifest expects there.
func decodePage(b []byte, id ChunkID, k *Key, want int) (page, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("map page %s: "+format+": %w", append([]any{id}, append(a, ErrCorrupt)...)...)
	}
	if len(b) > maxPageObjectSize {
		return page{}, bad("%d bytes is too large", len(b))
	}
	if got := ChunkID(sha256.Sum256(b)); got != id {
		return page{}, bad("content hashes to %s", got)
	}
	if k != nil {
		if len(b) < 4+nonceSize+tagSize || string(b[:4]) != pageSealedMagic {
			return page{}, bad("not a sealed page")
		}
		plain, err := k.mapAEAD.Open(nil, b[4:4+nonceSize], b[4+nonceSize:], []byte(pageSealedMagic))
		if err != nil {
			return page{}, fmt.Errorf("map page %s: authentication failed: %w", id, ErrKey)
		}
		b = plain
	}
	if len(b) < pageHeadSize || string(b[:4]) != pageMagic || b[4] != 1 || b[6] != 0 || b[7] != 0 {
		return page{}, bad("bad header")
	}
	flags := b[5]
	if flags&^pageFlagLeaves != 0 || (flags&pageFlagLeaves != 0) != (k != nil) {
		return page{}, bad("flags %#x do not match the backup's encryption", flags)
	}
	n := int(binary.LittleEndian.Uint32(b[8:]))
	esize := 32
	if flags&pageFlagLeaves != 0 {
		esize = 64
	}
	if n != want || n == 0 || n > 4096 || len(b) != pageHeadSize+esize*n {
		return page{}, bad("%d entries in %d bytes, manifest expects %d", n, len(b), want)
	}
	p := page{IDs: make([]ChunkID, n)}
	if esize == 64 {
		p.Leaves = make([]ChunkID, n)
	}
	for i := range n {
		e := b[pageHeadSize+i*esize:]
		copy(p.IDs[i][:], e[:32])
		if esize == 64 {
			copy(p.Leaves[i][:], e[32:64])
			if p.IDs[i].IsZero() != p.Leaves[i].IsZero() {
				return page{}, bad("entry %d: zero id with a leaf or a leaf without id", i)
			}
		}
	}
	return p, nil
}
