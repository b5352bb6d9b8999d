package plugins_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/plugins"
)

const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

func TestParseCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want map[string]string
		err  string
	}{
		{name: "plain", in: "AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=" + secret + "\n", want: map[string]string{"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": secret}},
		{name: "comments, blanks, export, quotes, CRLF", in: "# creds\r\n\r\nexport A=\"x y\"\r\n B = 'z' \r\nC=\n", want: map[string]string{"A": "x y", "B": "z", "C": ""}},
		{name: "value with =", in: "A=b=c", want: map[string]string{"A": "b=c"}},
		{name: "empty file", in: "", want: map[string]string{}},
		{name: "no equals", in: "A=1\n" + secret + "\n", err: "line 2"},
		{name: "bad name", in: "1A=x", err: "line 1"},
		{name: "duplicate", in: "A=1\nA=2", err: "set twice"},
		{name: "too long", in: strings.Repeat("#", 70000), err: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := plugins.ParseCredentials(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseCredentials: %v, want an error with %q", err, tt.err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error shows the line's content: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCredentials: %v", err)
			}
			if c.Len() != len(tt.want) {
				t.Fatalf("got %d names %v, want %v", c.Len(), c.Names(), tt.want)
			}
			for k, v := range tt.want {
				if got, ok := c.Get(k); !ok || got != v {
					t.Fatalf("%s = %q, %v; want %q", k, got, ok, v)
				}
			}
		})
	}
}

// No way of printing credentials shows a value.
func TestCredentialsRedacted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "creds")
	if err := os.WriteFile(path, []byte("AWS_SECRET_ACCESS_KEY="+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := plugins.LoadCredentialsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	l := slog.New(slog.NewJSONHandler(&logged, nil))
	l.Info("creds", "c", c, "cfg", plugins.TargetConfig{Name: "t", URL: "s3://b/p?endpoint=http://x", Credentials: c})
	js, _ := json.Marshal(struct{ C plugins.Credentials }{c})
	outputs := []string{
		fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s %q %x", c, c, c, c, c, c), c.String(), logged.String(), string(js),
		fmt.Sprintf("%+v", plugins.TargetConfig{Credentials: c}),
	}
	for _, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, "wJalr") {
			t.Fatalf("credentials printed with their value: %s", out)
		}
	}
	if !strings.Contains(logged.String(), "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("the log does not even name the credential: %s", logged.String())
	}
	if _, err := plugins.LoadCredentialsFile(filepath.Join(dir, "missing")); err == nil {
		t.Fatalf("loading a missing file succeeded")
	}
}

func FuzzParseCredentials(f *testing.F) {
	f.Add("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
	f.Add("# c\nexport A='x'\r\nB=\"\"\n")
	f.Add("A=1\nA=2")
	f.Add("=x\n\x00=y")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := plugins.ParseCredentials(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, n := range c.Names() {
			if n == "" || strings.ContainsAny(n, "= \t\n\x00") {
				t.Fatalf("accepted name %q from %q", n, in)
			}
		}
	})
}
