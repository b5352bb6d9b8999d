package backupd

// Fuzz targets for the decoders of fuzz_test.go's neighbours: the names and
// small objects read from a target (manifest keys, chunk ids, GC marks and
// leases) and the local files (restore state, key file).
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzParseManifestKey$' -fuzztime 60s ./backupd/

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins/targettest"
)

func FuzzParseManifestKey(f *testing.F) {
	f.Add(ManifestKey("vol-a", "0123456789abcdef0123456789abcdef"))
	f.Add(ManifestKey("a", newBackupID()))
	f.Add(ManifestKey(strings.Repeat("v", 63), "ffffffffffffffffffffffffffffffff"))
	f.Add(ManifestKey(strings.Repeat("v", 64), "ffffffffffffffffffffffffffffffff")) // name too long
	f.Add(ManifestKey("vol-a", "0123456789ABCDEF0123456789abcdef"))                 // upper case
	f.Add(ManifestKey("vol-a", "0123456789abcdef0123456789abcde"))                  // 31 digits
	f.Add(ManifestKey("vol-a", "0123456789abcdef0123456789abcdef/x"))
	f.Add(ManifestKey("../etc", "0123456789abcdef0123456789abcdef"))
	f.Add("backups//0123456789abcdef0123456789abcdef")
	f.Add("backups/vol-a")
	f.Add("packs/vol-a/0123456789abcdef0123456789abcdef")
	f.Add("")
	f.Fuzz(func(t *testing.T, key string) {
		volume, id, err := ParseManifestKey(key)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if volume != "" || id != "" {
				t.Fatalf("error %v with volume %q id %q", err, volume, id)
			}
			return
		}
		if !ValidName(volume) {
			t.Fatalf("accepted invalid volume name %q", volume)
		}
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("accepted id %q: not 32 lowercase hex digits", id)
		}
		if got := ManifestKey(volume, id); got != key {
			t.Fatalf("ManifestKey(%q, %q) = %q, not the key parsed", volume, id, got)
		}
	})
}

func FuzzParseChunkID(f *testing.F) {
	f.Add(ChunkID{}.String())
	f.Add(chunkID(nil, []byte("hello")).String())
	f.Add(strings.ToUpper(chunkID(nil, []byte("hello")).String()))
	f.Add(chunkID(nil, []byte("hello")).String()[:63])
	f.Add(chunkID(nil, []byte("hello")).String() + "0")
	f.Add(strings.Repeat("g", 64))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseChunkID(s)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if c.String() != s {
			t.Fatalf("ParseChunkID(%q) = %s: does not encode back to the input", s, c)
		}
	})
}

func FuzzParseHex(f *testing.F) {
	f.Add("", uint8(0))
	f.Add("00ff", uint8(2))
	f.Add("0123456789abcdef0123456789abcdef", uint8(16))
	f.Add("0123456789ABCDEF0123456789abcdef", uint8(16))
	f.Add("0g", uint8(1))
	f.Add("abc", uint8(1))
	f.Add(" 0123", uint8(2))
	f.Fuzz(func(t *testing.T, s string, n uint8) {
		dst := make([]byte, n%65)
		err := parseHex(s, dst)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if got := hex.EncodeToString(dst); got != s {
			t.Fatalf("parseHex(%q) into %d bytes = %s: does not encode back to the input", s, len(dst), got)
		}
	})
}

func FuzzDecodeMark(f *testing.F) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)
	f.Add(marshalJSON(gcMark{Marked: t0}))
	f.Add(marshalJSON(gcMark{Marked: t0.In(time.FixedZone("x", 3600))}))
	f.Add(marshalJSON(gcMark{}))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"marked":"2026-01-01T00:00:00Z","extra":1}`))
	f.Add([]byte(`{"marked":"2026-01-01T00:00:00Z"} {}`))
	f.Add([]byte(`{"marked":1}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		mk, ok := decodeMark(b)
		if !ok {
			if !mk.Marked.IsZero() {
				t.Fatalf("refused mark returned time %v", mk.Marked)
			}
			return
		}
		if mk.Marked.IsZero() {
			t.Fatal("accepted a mark without a time")
		}
		// GC compares the mark read at the sweep with the one read at
		// the start by Equal: a mark written again from a decoded one
		// must compare equal.
		again, ok := decodeMark(marshalJSON(mk))
		if !ok || !again.Marked.Equal(mk.Marked) {
			t.Fatalf("mark %v re-encoded decodes to %v, %v", mk.Marked, again.Marked, ok)
		}
	})
}

// FuzzGCLease puts a fuzzed object among the GC leases and takes the
// lease: another lease renewed within leaseStale of now (by either
// clock) makes takeGCLease fail with ErrBusy and leaves that lease alone;
// any other lease (abandoned, dated far ahead, or not decoding) is removed
// and the lease taken.
func FuzzGCLease(f *testing.F) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lease := func(renewed time.Time) []byte {
		return marshalJSON(leaseBody{Host: "other", PID: 7, Taken: renewed.Add(-time.Hour), Renewed: renewed})
	}
	for _, d := range []time.Duration{0, -time.Minute, time.Minute, -leaseStale, leaseStale, -leaseStale - time.Nanosecond,
		leaseStale + time.Nanosecond, -100 * 365 * 24 * time.Hour} {
		f.Add(lease(now.Add(d)))
	}
	f.Add(lease(now.In(time.FixedZone("x", -7*3600))))
	f.Add(lease(time.Time{}))
	f.Add([]byte(`{"renewed":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"renewed":"2026-01-01T00:00:00Z","pid":"x"}`))
	f.Add([]byte(`{"renewed":"2026-01-01T00:00:00Z"} {}`))
	f.Add([]byte(`{"renewed":"9999-12-31T23:59:59Z"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{`))
	f.Add([]byte{})
	f.Add(append(lease(now), bytes.Repeat([]byte{' '}, 4096)...)) // live, but larger than any lease
	const otherKey = prefixLocks + "gc-0123456789abcdef"
	f.Fuzz(func(t *testing.T, body []byte) {
		ctx := t.Context()
		tg := targettest.NewMemory()
		r := Open(tg, nil)
		if err := r.putBytes(ctx, otherKey, body); err != nil {
			t.Fatal(err)
		}
		// The lease's reading: what the protocol (FORMAT.md, "Garbage
		// collection") says makes another lease live.
		var other leaseBody
		// Larger than any lease (4 KiB): damage, removed like a lease
		// that does not decode (it blocked every GC with ErrCorrupt).
		decodes := len(body) <= 4096 && json.Unmarshal(body, &other) == nil && !other.Renewed.IsZero()
		age := now.Sub(other.Renewed)
		live := decodes && age >= -leaseStale && age <= leaseStale
		l, err := r.takeGCLease(ctx, func() time.Time { return now })
		left := SortedKeys(t, tg, prefixLocks)
		switch {
		case live:
			if !errors.Is(err, ErrBusy) {
				if err == nil {
					l.release()
				}
				t.Fatalf("takeGCLease next to a lease renewed %v ago: %v, want ErrBusy", age, err)
			}
			if len(left) != 1 || left[0] != otherKey {
				t.Fatalf("leases left after ErrBusy: %v, want only %s", left, otherKey)
			}
			if got, err := r.getAll(ctx, otherKey, 1<<20); err != nil || !bytes.Equal(got, body) {
				t.Fatalf("the live lease was changed: %q, %v", got, err)
			}
		default:
			if err != nil {
				t.Fatalf("takeGCLease next to a dead lease (decodes %v, renewed %v ago): %v", decodes, age, err)
			}
			if len(left) != 1 || left[0] != l.key {
				l.release()
				t.Fatalf("leases after taking it: %v, want only its own %s", left, l.key)
			}
			l.release()
			if left := SortedKeys(t, tg, prefixLocks); len(left) != 0 {
				t.Fatalf("leases after release: %v, want none", left)
			}
		}
	})
}

func FuzzReadRestoreState(f *testing.F) {
	key := ManifestKey("vol-a", "0123456789abcdef0123456789abcdef")
	digest := "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	f.Add(marshalJSON(restoreState{Manifest: key, Digest: digest, PagesDone: 12}))
	f.Add(marshalJSON(restoreState{}))
	f.Add(marshalJSON(restoreState{Manifest: key, Digest: digest, PagesDone: 1 << 40}))
	f.Add([]byte(`{"manifest":"` + key + `","digest":"` + digest + `","pages_done":-1}`))
	f.Add([]byte(`{"manifest":"` + key + `","pages_done":1.5}`))
	f.Add([]byte(`{"manifest":"` + key + `","extra":1}`))
	f.Add([]byte(`{"pages_done":3} {"pages_done":-3}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "state")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := readRestoreState(path)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if st != (restoreState{}) {
				t.Fatalf("error %v with state %+v", err, st)
			}
			return
		}
		if st.PagesDone < 0 {
			t.Fatalf("accepted pages_done %d", st.PagesDone)
		}
		if d := json.NewDecoder(bytes.NewReader(b)); d.Decode(new(any)) != nil || d.More() {
			t.Fatalf("accepted %q: not one JSON value", b)
		}
		path2 := filepath.Join(dir, "state2")
		if err := writeRestoreState(path2, st); err != nil {
			t.Fatal(err)
		}
		again, err := readRestoreState(path2)
		if err != nil || again != st {
			t.Fatalf("state %+v written and read back: %+v, %v", st, again, err)
		}
	})
}

func FuzzLoadKeyFile(f *testing.F) {
	raw := bytes.Repeat([]byte{0x9c}, KeySize)
	raw[0] = 0
	hexKey := hex.EncodeToString(bytes.Repeat([]byte{0xa5}, KeySize))
	f.Add(raw)
	f.Add([]byte(hexKey))
	f.Add([]byte(hexKey + "\n"))
	f.Add([]byte(" \t" + strings.ToUpper(hexKey) + "\r\n\n"))
	f.Add([]byte(hexKey[:62] + "\n"))
	f.Add([]byte(hexKey + "00"))
	f.Add([]byte(hexKey[:KeySize]))                    // 32 printable bytes: refused
	f.Add([]byte("correct horse battery staple!!!\n")) // a passphrase
	f.Add(raw[:KeySize-1])
	f.Add(append(bytes.Clone(raw), 0))
	f.Add(append([]byte(hexKey), bytes.Repeat([]byte{' '}, 4096)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := LoadKeyFile(path)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if k != nil {
				t.Fatalf("error %v with a key", err)
			}
			return
		}
		if len(b) > 4096 {
			t.Fatalf("accepted a %d-byte key file", len(b))
		}
		// The secret the documentation says the file holds: 32 raw
		// bytes that are not all text, or 64 hex digits.
		var secret []byte
		if len(b) == KeySize && !printable(b) {
			secret = b
		} else {
			s := strings.TrimSpace(string(b))
			if len(s) != 2*KeySize {
				t.Fatalf("accepted %q: neither 32 raw bytes nor 64 hex digits", b)
			}
			if secret, err = hex.DecodeString(s); err != nil {
				t.Fatalf("accepted %q: not hex: %v", b, err)
			}
		}
		want, err := NewKey(secret)
		if err != nil {
			t.Fatal(err)
		}
		if k.ID() != want.ID() || !bytes.Equal(k.idKey, want.idKey) {
			t.Fatalf("key from %q has id %s, want %s", b, k.ID(), want.ID())
		}
	})
}
