package backupd

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// KeySize is the size of a repository key in bytes.
const KeySize = 32

// Key is a repository key: the secret every encrypted backup on a target
// shares. Sub-keys are derived from it with HMAC-SHA-256 under fixed labels
// (FORMAT.md, "Encryption"), so one secret gives the chunk-id key, the
// chunk encryption key and the map-page keys. The zero of *Key (nil) means
// "not encrypted".
type Key struct {
	idKey   []byte
	macKey  []byte // manifests' MACs
	aead    cipher.AEAD
	mapAEAD cipher.AEAD
	keyID   string
}

// NewKey derives the sub-keys from a 32-byte secret.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("repository key is %d bytes, want %d: %w", len(secret), KeySize, ErrInvalid)
	}
	derive := func(label string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(label))
		return m.Sum(nil)
	}
	newAEAD := func(k []byte) (cipher.AEAD, error) {
		b, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	k := &Key{idKey: derive("strata backup chunk id v1"), macKey: derive("strata backup manifest mac v1")}
	var err error
	if k.aead, err = newAEAD(derive("strata backup chunk encryption v1")); err != nil {
		return nil, fmt.Errorf("repository key: %w", err)
	}
	if k.mapAEAD, err = newAEAD(derive("strata backup map encryption v1")); err != nil {
		return nil, fmt.Errorf("repository key: %w", err)
	}
	k.keyID = hex.EncodeToString(derive("strata backup key id v1")[:8])
	return k, nil
}

// LoadKeyFile reads a repository key from a file holding 64 hex digits
// (surrounding white space ignored) or exactly 32 raw bytes. The file is
// never logged nor copied anywhere.
//
// Only regular files are read, at most 4 KiB of them (a device or a FIFO
// named by mistake would hang or exhaust memory), and 32 bytes that are
// all printable text are refused as a raw key: that is a passphrase or a
// truncated hex key, which the raw reading would silently take.
func LoadKeyFile(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("repository key file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("repository key file: %w", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("repository key file %s: not a regular file (%v): %w", path, fi.Mode().Type(), ErrInvalid)
	}
	const maxKeyFile = 4 << 10
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("repository key file: %w", err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("repository key file %s: larger than %d bytes: %w", path, maxKeyFile, ErrInvalid)
	}
	if len(b) == KeySize && !printable(b) {
		return NewKey(b)
	}
	s := strings.TrimSpace(string(b))
	raw, err := hex.DecodeString(s)
	if err != nil || len(raw) != KeySize {
		return nil, fmt.Errorf("repository key file %s: want %d hex digits or %d raw bytes: %w", path, 2*KeySize, KeySize, ErrInvalid)
	}
	return NewKey(raw)
}

// printable reports whether b is all printable ASCII or white space: text,
// not a random raw key (which is that with probability (97/256)^32, about
// 3e-14).
func printable(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

// ID is a public fingerprint of the key, recorded in manifests so that a
// restore with another key fails with a clear error before any chunk.
func (k *Key) ID() string { return k.keyID }

// idHash returns the hash that names chunks: SHA-256 without a key,
// HMAC-SHA-256 under the id key with one.
func (k *Key) idHash() hash.Hash {
	if k == nil {
		return sha256.New()
	}
	return hmac.New(sha256.New, k.idKey)
}

// LabelledMAC returns, in hex, a MAC of data under the key's manifest MAC
// sub-key, kept apart from every other use of that sub-key by label (a
// length-prefixed string before data, as manifestMAC's label): for the
// manifests other packages write, such as the coordinator's system
// manifests.
func (k *Key) LabelledMAC(label string, data []byte) string {
	h := k.labelledMAC(label)
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

// labelledMAC returns an HMAC-SHA-256 under the manifest MAC sub-key that
// has been given label (its u64 big-endian length, then its bytes).
func (k *Key) labelledMAC(label string) hash.Hash {
	h := hmac.New(sha256.New, k.macKey)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(label)))
	h.Write(n[:])
	h.Write([]byte(label))
	return h
}

// manifestMAC returns the MAC of manifest m under the key, in hex: of
// the label "strata manifest mac v1" and m.writeMACInput.
func (k *Key) manifestMAC(m *Manifest) string {
	h := k.labelledMAC("strata manifest mac v1")
	m.writeMACInput(h)
	return hex.EncodeToString(h.Sum(nil))
}
