package s3

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-block/strata/plugins"
)

func TestParseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		want Config
		err  string
	}{
		{url: "s3://bucket", want: Config{Bucket: "bucket", Region: "us-east-1", PartSize: DefaultPartSize, Conditional: ConditionalAuto}},
		{url: "s3://my.bucket-1/backups/host1/?endpoint=http://127.0.0.1:7070/&region=eu-west-3&part_size=5242880&conditional=check-then-put",
			want: Config{Bucket: "my.bucket-1", Prefix: "backups/host1/", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-3", PartSize: 5 << 20, Conditional: ConditionalCheckThenPut}},
		{url: "file:///x", err: "scheme"},
		{url: "s3://AKIA:secret@bucket", err: "user info"},
		{url: "s3://B", err: "bucket"},
		{url: "s3://-bucket", err: "bucket"},
		{url: "s3://bucket/../x", err: "prefix"},
		{url: "s3://bucket/.hidden", err: "prefix"},
		{url: "s3://bucket?endpoint=ftp://x", err: "endpoint"},
		{url: "s3://bucket?endpoint=http://u:p@x", err: "endpoint"},
		{url: "s3://bucket?region=US", err: "region"},
		{url: "s3://bucket?part_size=1024", err: "part_size"},
		{url: "s3://bucket?conditional=maybe", err: "conditional"},
		{url: "s3://bucket?endpont=http://x", err: "unknown parameter"},
		{url: "s3://bucket?region=a&region=b", err: "2 times"},
	}
	for _, tt := range tests {
		got, err := ParseURL(tt.url)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, plugins.ErrPermanent) {
				t.Errorf("ParseURL(%q) = %+v, %v; want a permanent error about %q", tt.url, got, err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q): error shows the secret: %v", tt.url, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", tt.url, got, err, tt.want)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	f.Add("s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1")
	f.Add("s3://b.b-b/a/b/?part_size=5242880&conditional=none")
	f.Add("s3://u:p@bucket")
	f.Add("s3://bucket/%2e%2e/x")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseURL(s)
		if err != nil {
			return
		}
		if !validBucket(c.Bucket) || c.PartSize < MinPartSize || c.PartSize > MaxPartSize {
			t.Fatalf("ParseURL(%q) = %+v", s, c)
		}
		if c.Prefix != "" && (!strings.HasSuffix(c.Prefix, "/") || plugins.ValidateKey(strings.TrimSuffix(c.Prefix, "/")) != nil) {
			t.Fatalf("ParseURL(%q): prefix %q is not a key followed by /", s, c.Prefix)
		}
	})
}

func TestResolveKeys(t *testing.T) {
	t.Parallel()
	env := map[string]string{EnvAccessKey: "env-access", EnvSecretKey: "env-secret"}
	getenv := func(k string) string { return env[k] }
	noenv := func(string) string { return "" }
	tests := []struct {
		name   string
		creds  map[string]string
		getenv func(string) string
		want   keys
		err    string
	}{
		{name: "from credentials", creds: map[string]string{EnvAccessKey: "a", EnvSecretKey: "s", EnvSessionToken: "tok"}, getenv: getenv, want: keys{"a", "s", "tok"}},
		{name: "from environment", getenv: getenv, want: keys{"env-access", "env-secret", ""}},
		{name: "none", getenv: noenv, err: "no AWS_ACCESS_KEY_ID"},
		{name: "secret only", creds: map[string]string{EnvSecretKey: "hidden-value"}, getenv: getenv, err: "no AWS_ACCESS_KEY_ID"},
		{name: "access only", creds: map[string]string{EnvAccessKey: "a"}, getenv: getenv, err: "no AWS_SECRET_ACCESS_KEY"},
	}
	for _, tt := range tests {
		got, err := resolveKeys(plugins.NewCredentials(tt.creds), tt.getenv)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || strings.Contains(err.Error(), "hidden-value") {
				t.Errorf("%s: %v, want an error about %q without the value", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}
