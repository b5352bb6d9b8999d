package s3_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/s3"
	"github.com/strata-block/strata/plugins/targettest"
)

// The test binary doubles as `strata plugin serve s3`.
func TestMain(m *testing.M) {
	targettest.Main(m, map[string]plugins.OpenFunc{s3.Kind: s3.Open})
}

var testCreds = plugins.NewCredentials(map[string]string{s3.EnvAccessKey: testAccess, s3.EnvSecretKey: testSecret})

func openDirect(t *testing.T, url string) plugins.Target {
	t.Helper()
	tg, err := s3.Open(t.Context(), url, testCreds)
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

func openPlugin(t *testing.T, url string) *plugins.Remote {
	t.Helper()
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t)})
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "s3-test", URL: url, Credentials: testCreds})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r
}

func TestConformance(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	// A small part size so 1 MiB + 1 is one PutObject and 64 MiB a
	// multipart upload of 13 parts.
	targettest.Run(t, func(t *testing.T) plugins.Target { return openDirect(t, g.url("&part_size=5242880")) })
}

func TestConformancePlugin(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	targettest.Run(t, func(t *testing.T) plugins.Target { return openPlugin(t, g.url("")) })
}

func TestCrash(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	targettest.RunCrash(t, func(t *testing.T) (targettest.PluginTarget, plugins.Target) {
		u := g.url("&part_size=8388608")
		return openPlugin(t, u), openDirect(t, u)
	})
}

// The conditional-write probe finds versitygw's If-None-Match support.
func TestConditionalModes(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tests := []struct {
		extra string
		want  plugins.ConditionalCreate
	}{
		{extra: "", want: plugins.ConditionalCreateAtomic},
		{extra: "&conditional=native", want: plugins.ConditionalCreateAtomic},
		{extra: "&conditional=none", want: plugins.ConditionalCreateNone},
	}
	for _, tt := range tests {
		tg := openDirect(t, g.url(tt.extra))
		info, err := tg.Info(t.Context())
		if err != nil {
			t.Fatalf("Info(%q): %v", tt.extra, err)
		}
		if info.ConditionalCreate != tt.want {
			t.Fatalf("Info(%q).ConditionalCreate = %v, want %v", tt.extra, info.ConditionalCreate, tt.want)
		}
		if tt.want == plugins.ConditionalCreateNone {
			err := tg.PutIfAbsent(t.Context(), "k", strings.NewReader("x"), 1)
			if !errors.Is(err, plugins.ErrUnsupported) {
				t.Fatalf("PutIfAbsent with conditional=none: %v, want unsupported", err)
			}
		}
		// The probe object never shows.
		for o, err := range tg.List(t.Context(), "", "") {
			t.Fatalf("List after the probe: %v, %v", o, err)
		}
	}
}

// Bad credentials are a permanent error naming no secret.
func TestWrongCredentials(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	creds := plugins.NewCredentials(map[string]string{s3.EnvAccessKey: testAccess, s3.EnvSecretKey: "WRONG-SECRET-VALUE"})
	tg, err := s3.Open(t.Context(), g.url(""), creds)
	if err != nil {
		t.Fatal(err)
	}
	err = tg.Put(t.Context(), "k", strings.NewReader("x"), 1)
	if err == nil || plugins.Classify(err) != plugins.ClassPermanent {
		t.Fatalf("Put with a wrong secret: %v (%v), want a permanent error", err, plugins.Classify(err))
	}
	if strings.Contains(fmt.Sprint(err), "WRONG-SECRET-VALUE") {
		t.Fatalf("the error shows the secret: %v", err)
	}
}

// On a real server, a bucket that is missing — never made, or deleted
// after the target stored objects in it — fails Has and Get with a
// permanent error naming it: it never reads as "no such object", which
// callers act on (GC drops what refers to an absent object).
func TestMissingBucket(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tests := []struct {
		name   string
		bucket string
		delete bool // make the bucket, store and remove an object, delete it
	}{
		{name: "never made", bucket: "strata-never-made"},
		{name: "deleted", bucket: "strata-deleted", delete: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			tg := openDirect(t, fmt.Sprintf("s3://%s/p?endpoint=%s&region=us-east-1", tt.bucket, g.endpoint))
			if tt.delete {
				c := g.client()
				if _, err := c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(tt.bucket)}); err != nil {
					t.Fatalf("CreateBucket: %v", err)
				}
				if err := tg.Put(ctx, "k", strings.NewReader("x"), 1); err != nil {
					t.Fatal(err)
				}
				if has, err := tg.Has(ctx, []string{"k", "gone"}); err != nil || !has[0] || has[1] {
					t.Fatalf("Has with the bucket there = %v, %v", has, err)
				}
				if err := tg.Delete(ctx, []string{"k"}); err != nil {
					t.Fatal(err)
				}
				if _, err := c.DeleteBucket(ctx, &awss3.DeleteBucketInput{Bucket: aws.String(tt.bucket)}); err != nil {
					t.Fatalf("DeleteBucket: %v", err)
				}
			}
			permanent := func(op string, err error) {
				t.Helper()
				if err == nil || errors.Is(err, plugins.ErrNotFound) || plugins.Classify(err) != plugins.ClassPermanent || !strings.Contains(err.Error(), tt.bucket) {
					t.Fatalf("%s: %v (%v), want a permanent error naming bucket %s", op, err, plugins.Classify(err), tt.bucket)
				}
			}
			has, err := tg.Has(ctx, []string{"k"})
			if err == nil {
				t.Fatalf("Has = %v without an error", has)
			}
			permanent("Has", err)
			for _, length := range []int64{-1, 0} {
				rc, _, err := tg.Get(ctx, "k", 0, length)
				if err == nil {
					rc.Close()
					t.Fatalf("Get(length %d) succeeded", length)
				}
				permanent(fmt.Sprintf("Get(length %d)", length), err)
			}
		})
	}
}
