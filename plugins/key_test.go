package plugins_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/targettest"
)

func TestValidateKey(t *testing.T) {
	t.Parallel()
	valid := []string{
		"a", "A9", "chunks/ab/abcdef0123", "manifests/vol-a/2026-11-26T10_00_00Z", "x=1/y_2/z-3.json",
		"a..b", "a.", strings.Repeat("s", plugins.MaxSegmentLength),
		strings.Repeat(strings.Repeat("s", 127)+"/", 8)[:plugins.MaxKeyLength-1] + "z",
	}
	for _, k := range valid {
		if err := plugins.ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%.40q) = %v, want nil", k, err)
		}
	}
	for _, k := range targettest.HostileKeys {
		err := plugins.ValidateKey(k)
		if !errors.Is(err, plugins.ErrInvalidKey) || !errors.Is(err, plugins.ErrPermanent) {
			t.Errorf("ValidateKey(%.40q) = %v, want ErrInvalidKey (permanent)", k, err)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		prefix string
		ok     bool
	}{
		{prefix: "", ok: true},
		{prefix: "a", ok: true},
		{prefix: "a/", ok: true},
		{prefix: "a/b", ok: true},
		{prefix: "/", ok: false},
		{prefix: "a//", ok: false},
		{prefix: "../", ok: false},
		{prefix: ".", ok: false},
		{prefix: "a/.", ok: false},
		{prefix: "nul\x00", ok: false},
	}
	for _, tt := range tests {
		if err := plugins.ValidatePrefix(tt.prefix); (err == nil) != tt.ok {
			t.Errorf("ValidatePrefix(%q) = %v, want ok %v", tt.prefix, err, tt.ok)
		}
	}
}

// Whatever ValidateKey accepts is a relative, clean, printable-ASCII path
// with no dot segments, within the length limits.
func FuzzValidateKey(f *testing.F) {
	for _, k := range append([]string{"a", "a/b", "chunks/ab/cd", "a=b/c_d.e-f"}, targettest.HostileKeys...) {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if plugins.ValidateKey(k) != nil {
			return
		}
		if k == "" || len(k) > plugins.MaxKeyLength || !utf8.ValidString(k) || strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") {
			t.Fatalf("accepted %q", k)
		}
		for _, seg := range strings.Split(k, "/") {
			if seg == "" || seg[0] == '.' || len(seg) > plugins.MaxSegmentLength {
				t.Fatalf("accepted %q with segment %q", k, seg)
			}
		}
		for _, r := range k {
			if r <= ' ' || r >= 0x7f || r == '\\' {
				t.Fatalf("accepted %q with byte %q", k, r)
			}
		}
		if err := plugins.ValidatePrefix(k); err != nil {
			t.Fatalf("a valid key is not a valid prefix: %q: %v", k, err)
		}
	})
}
