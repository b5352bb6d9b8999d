package plugins

import (
	"fmt"
	"strings"
)

// ValidateKey reports whether key is a valid object key, wrapping
// ErrInvalidKey with the reason if not. It is the one place keys are
// checked: the client shim, the server shim and every built-in target call
// it, so a key that passes means the same object everywhere.
//
// The grammar:
//
//	key     = segment *( "/" segment )      ; 1..1024 bytes in all
//	segment = first *char                   ; 1..255 bytes
//	first   = ALPHA / DIGIT / "_" / "-" / "=" ; not ".": "." and ".." and
//	                                        ; hidden names are never keys
//	char    = first / "."
//
// So a key is never empty, never absolute ("/a"), has no empty segment
// ("a//b", "a/"), no "." or ".." segment, no byte outside printable ASCII
// letters, digits and "_-=." (no NUL, control character, space, backslash or
// non-ASCII byte), and maps to a relative path on any filesystem and to an
// S3 key without escaping. Names beginning with "." are reserved for the
// targets' own files (temporary files, probes), which List never shows.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("key is empty: %w", ErrInvalidKey)
	}
	if len(key) > MaxKeyLength {
		return fmt.Errorf("key of %d bytes is longer than %d: %w", len(key), MaxKeyLength, ErrInvalidKey)
	}
	if key[0] == '/' {
		return fmt.Errorf("key %q is absolute: %w", key, ErrInvalidKey)
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i < len(key) && key[i] != '/' {
			if !keyByte(key[i]) {
				return fmt.Errorf("key %q: byte %#02x at offset %d is not allowed: %w", key, key[i], i, ErrInvalidKey)
			}
			continue
		}
		if err := validateSegment(key, key[start:i]); err != nil {
			return err
		}
		start = i + 1
	}
	return nil
}

func validateSegment(key, seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("key %q has an empty segment: %w", key, ErrInvalidKey)
	case seg == "." || seg == "..":
		return fmt.Errorf("key %q has a %q segment: %w", key, seg, ErrInvalidKey)
	case seg[0] == '.':
		return fmt.Errorf("key %q: segment %q begins with \".\", which is reserved: %w", key, seg, ErrInvalidKey)
	case len(seg) > MaxSegmentLength:
		return fmt.Errorf("key %q: segment of %d bytes is longer than %d: %w", key, len(seg), MaxSegmentLength, ErrInvalidKey)
	}
	return nil
}

// keyByte reports whether b may appear in a key segment.
func keyByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	case b == '_', b == '-', b == '=', b == '.':
		return true
	}
	return false
}

// ValidatePrefix reports whether prefix may select keys in List: the empty
// prefix (every key), a valid key, a valid key followed by "/", or a valid
// key whose last segment is cut short. It wraps ErrInvalidKey if not.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	return nil
}

// validateKeys validates every key of a batch.
func validateKeys(keys []string) error {
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
	}
	return nil
}
