package backupd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadKeyFile: a key file holds 64 hex digits (white space around them
// ignored) or 32 raw bytes; 32 bytes of text (a passphrase, a truncated
// hex key), a file too large and anything but a regular file are refused
// with ErrInvalid.
func TestLoadKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hexKey := strings.Repeat("5a", KeySize)
	raw := bytes.Repeat([]byte{0x5a}, KeySize)
	raw[0] = 0x01 // not text
	want, err := NewKey(bytes.Repeat([]byte{0x5a}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content []byte
		ok      bool
	}{
		{"hex", []byte(hexKey), true},
		{"hex-newline", []byte(hexKey + "\n"), true},
		{"raw", raw, true},
		{"passphrase-31-and-newline", []byte(strings.Repeat("p", 31) + "\n"), false},
		{"truncated-hex", []byte(hexKey[:32]), false},
		{"short", []byte("abc"), false},
		{"large", bytes.Repeat([]byte("5a"), 4096), false},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, tc.content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := LoadKeyFile(p)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case !tc.ok && !errors.Is(err, ErrInvalid):
			t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
		case tc.name == "hex" && k.ID() != want.ID():
			t.Errorf("hex key has id %s, want %s", k.ID(), want.ID())
		}
	}
	if _, err := LoadKeyFile(dir); !errors.Is(err, ErrInvalid) {
		t.Errorf("a directory: %v, want ErrInvalid", err)
	}
}
