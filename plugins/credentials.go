package plugins

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
)

// Credentials are a target's secrets as NAME=value pairs (for S3,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
// AWS_SESSION_TOKEN). The values never leave through formatting: String,
// GoString, every fmt verb, slog and JSON show only the names. The zero
// value holds nothing.
type Credentials struct {
	m map[string]string
}

// NewCredentials returns credentials holding a copy of m.
func NewCredentials(m map[string]string) Credentials {
	if len(m) == 0 {
		return Credentials{}
	}
	return Credentials{m: maps.Clone(m)}
}

// Get returns the value of name and whether it is set.
func (c Credentials) Get(name string) (string, bool) {
	v, ok := c.m[name]
	return v, ok
}

// Names returns the names set, sorted.
func (c Credentials) Names() []string {
	return slices.Sorted(maps.Keys(c.m))
}

// Len returns how many names are set.
func (c Credentials) Len() int { return len(c.m) }

// toMap returns a copy of the pairs, for the plugin protocol only.
func (c Credentials) toMap() map[string]string { return maps.Clone(c.m) }

// String lists the names only.
func (c Credentials) String() string {
	return "credentials{" + strings.Join(c.Names(), ",") + " (values redacted)}"
}

// GoString is String: %#v must not print the values either.
func (c Credentials) GoString() string { return c.String() }

// Format prints String for every verb, so no verb reaches the map.
func (c Credentials) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// LogValue logs the names only.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("names", c.Names()), slog.String("values", "redacted"))
}

// MarshalJSON writes the names only, so credentials stored or printed by
// mistake as JSON carry no secret.
func (c Credentials) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"names":[`)
	for i, n := range c.Names() {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q", n)
	}
	b.WriteString(`],"values":"redacted"}`)
	return b.Bytes(), nil
}

// maxCredentialsFile bounds a credentials file; real ones are a few lines.
const maxCredentialsFile = 64 << 10

// LoadCredentialsFile reads credentials from the file at path (see
// ParseCredentials). Errors name the file and line, never a value.
func LoadCredentialsFile(path string) (Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials file: %w", Permanent(err))
	}
	defer f.Close()
	c, err := ParseCredentials(f)
	if err != nil {
		return Credentials{}, fmt.Errorf("credentials file %s: %w", path, err)
	}
	return c, nil
}

// ParseCredentials reads NAME=value lines: blank lines and lines starting
// with "#" are skipped, an optional "export " prefix is allowed, NAME is
// [A-Za-z_][A-Za-z0-9_]*, and value is the rest of the line with
// surrounding blanks and one pair of matching surrounding quotes removed
// (no escapes, no variable expansion). A name set twice is an error. Errors
// give the line number and never its content: a malformed line may be a
// secret.
func ParseCredentials(r io.Reader) (Credentials, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxCredentialsFile+1))
	if err != nil {
		return Credentials{}, fmt.Errorf("reading: %w", Permanent(err))
	}
	if len(data) > maxCredentialsFile {
		return Credentials{}, fmt.Errorf("longer than %d bytes: %w", maxCredentialsFile, ErrPermanent)
	}
	m := make(map[string]string)
	for n, line := range strings.Split(string(data), "\n") {
		n++
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return Credentials{}, fmt.Errorf("line %d: want NAME=value: %w", n, ErrPermanent)
		}
		name = strings.TrimSpace(name)
		if !validCredentialName(name) {
			return Credentials{}, fmt.Errorf("line %d: the name is not [A-Za-z_][A-Za-z0-9_]*: %w", n, ErrPermanent)
		}
		if _, dup := m[name]; dup {
			return Credentials{}, fmt.Errorf("line %d: %s is set twice: %w", n, name, ErrPermanent)
		}
		m[name] = unquote(strings.TrimSpace(value))
	}
	return Credentials{m: m}, nil
}

func validCredentialName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		letter := 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || b == '_'
		if !letter && (i == 0 || b < '0' || b > '9') {
			return false
		}
	}
	return true
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}
