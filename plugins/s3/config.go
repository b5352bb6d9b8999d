package s3

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/strata-block/strata/plugins"
)

// Part sizes: S3's bounds, and the default (a Put holds one part in memory).
const (
	MinPartSize     = 5 << 20
	MaxPartSize     = 5 << 30
	DefaultPartSize = 16 << 20
	maxParts        = 10000
)

// ConditionalMode says how PutIfAbsent is done; see Config.Conditional.
type ConditionalMode string

// Conditional modes.
const (
	// ConditionalAuto probes the server once: if it honours
	// If-None-Match: * on PutObject, PutIfAbsent uses it; otherwise
	// PutIfAbsent returns ErrUnsupported.
	ConditionalAuto ConditionalMode = "auto"
	// ConditionalNative always sends If-None-Match: * without probing.
	ConditionalNative ConditionalMode = "native"
	// ConditionalCheckThenPut HEADs the key and PUTs if absent: two racing
	// creators can both succeed. Only for servers without conditional
	// writes, and only when the caller fences (Info reports it).
	ConditionalCheckThenPut ConditionalMode = "check-then-put"
	// ConditionalNone makes PutIfAbsent return ErrUnsupported.
	ConditionalNone ConditionalMode = "none"
)

// Config is a parsed s3 target URL.
type Config struct {
	Bucket string
	// Prefix is prepended to every key; empty or ending in "/".
	Prefix string
	// Endpoint is the server's base URL; empty means AWS. A custom
	// endpoint uses path-style addressing (http://host/bucket/key).
	Endpoint string
	Region   string
	// PartSize is the multipart part size and the largest object sent in
	// one PutObject.
	PartSize    int64
	Conditional ConditionalMode
}

// ParseURL parses s3://bucket/prefix?endpoint=URL&region=R&part_size=N&conditional=MODE.
// Every query parameter is optional (region defaults to us-east-1,
// part_size to 16 MiB, conditional to auto); an unknown one is an error, so
// a typo does not silently change behaviour. Credentials are never part of
// the URL.
func ParseURL(rawURL string) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("s3 target URL: "+format+": %w", append(args, plugins.ErrPermanent)...)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return bad("does not parse")
	}
	if u.Scheme != "s3" {
		return bad("scheme %q, want s3", u.Scheme)
	}
	if u.User != nil {
		return bad("user info is not allowed; credentials go in a credentials file")
	}
	if u.Opaque != "" || u.Fragment != "" {
		return bad("want s3://bucket/prefix")
	}
	c := Config{Bucket: u.Host, Region: "us-east-1", PartSize: DefaultPartSize, Conditional: ConditionalAuto}
	if !validBucket(c.Bucket) {
		return bad("bucket %q: want 3-63 of [a-z0-9.-], starting and ending with a letter or digit", c.Bucket)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := plugins.ValidateKey(p); err != nil {
			return bad("prefix: %v", err)
		}
		c.Prefix = p + "/"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query does not parse")
	}
	for name, vals := range q {
		if len(vals) != 1 {
			return bad("%s given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || e.Scheme != "http" && e.Scheme != "https" || e.Host == "" || e.User != nil || e.RawQuery != "" || e.Fragment != "" {
				return bad("endpoint must be http(s)://host[:port][/path] without user info")
			}
			c.Endpoint = strings.TrimSuffix(e.String(), "/")
		case "region":
			if v == "" || len(v) > 64 || strings.ContainsFunc(v, func(r rune) bool { return !(r == '-' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) {
				return bad("region %q", v)
			}
			c.Region = v
		case "part_size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < MinPartSize || n > MaxPartSize {
				return bad("part_size %q: want bytes between %d and %d", v, MinPartSize, int64(MaxPartSize))
			}
			c.PartSize = n
		case "conditional":
			m := ConditionalMode(v)
			switch m {
			case ConditionalAuto, ConditionalNative, ConditionalCheckThenPut, ConditionalNone:
			default:
				return bad("conditional %q: want auto, native, check-then-put or none", v)
			}
			c.Conditional = m
		default:
			return bad("unknown parameter %q (want endpoint, region, part_size, conditional)", name)
		}
	}
	return c, nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		alnum := 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
		if !alnum && (c != '.' && c != '-' || i == 0 || i == len(b)-1) {
			return false
		}
	}
	return true
}

// Credential names read from the credentials or the environment.
const (
	EnvAccessKey    = "AWS_ACCESS_KEY_ID"
	EnvSecretKey    = "AWS_SECRET_ACCESS_KEY"
	EnvSessionToken = "AWS_SESSION_TOKEN"
)

// keys are resolved S3 credentials.
type keys struct {
	access, secret, session string
}

// resolveKeys takes the access key pair from creds if it names one, else
// from the environment (getenv). Errors name what is missing, never a value.
func resolveKeys(creds plugins.Credentials, getenv func(string) string) (keys, error) {
	get := func(name string) string {
		v, _ := creds.Get(name)
		return v
	}
	source := "the credentials"
	if get(EnvAccessKey) == "" && get(EnvSecretKey) == "" {
		get, source = getenv, "the environment"
	}
	k := keys{access: get(EnvAccessKey), secret: get(EnvSecretKey), session: get(EnvSessionToken)}
	switch {
	case k.access == "" && k.secret == "":
		return keys{}, fmt.Errorf("s3 target: no %s and %s in the credentials or the environment: %w", EnvAccessKey, EnvSecretKey, plugins.ErrPermanent)
	case k.access == "":
		return keys{}, fmt.Errorf("s3 target: %s has %s but no %s: %w", source, EnvSecretKey, EnvAccessKey, plugins.ErrPermanent)
	case k.secret == "":
		return keys{}, fmt.Errorf("s3 target: %s has %s but no %s: %w", source, EnvAccessKey, EnvSecretKey, plugins.ErrPermanent)
	}
	return k, nil
}
