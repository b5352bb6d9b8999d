package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/s3"
)

// Tests against a fake S3 server, for answers a real server does not
// give: a bare 404, a listing cut short, a Range ignored, a failing
// multipart abort. The fake sees path-style requests: /bucket/key.

const fakeBucket = "fake-bucket"

// fakeTarget returns a target on a fake S3 server answering with h.
func fakeTarget(t *testing.T, h http.HandlerFunc) *s3.Target {
	t.Helper()
	return fakeTargetMode(t, h, s3.ConditionalNative)
}

// fakeTargetMode is fakeTarget with a conditional-write mode.
func fakeTargetMode(t *testing.T, h http.HandlerFunc, mode s3.ConditionalMode) *s3.Target {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tg := s3.New(s3.Config{
		Bucket: fakeBucket, Prefix: "p/", Endpoint: srv.URL, Region: "us-east-1",
		PartSize: s3.MinPartSize, Conditional: mode,
	}, "access", "secret", "")
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

// s3Error answers an S3 error document with code (none if empty: a bare
// status, as a HEAD's or a proxy's).
func s3Error(w http.ResponseWriter, r *http.Request, status int, code string) {
	_, _ = io.Copy(io.Discard, r.Body)
	if code == "" || r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>fake %s</Message><RequestId>r</RequestId></Error>`, code, code)
}

// isBucket reports whether r addresses the bucket itself.
func isBucket(r *http.Request) bool { return strings.Trim(r.URL.Path, "/") == fakeBucket }

// Only NoSuchKey means "no object". A HEAD's 404 (which has no body)
// means it only once the bucket is seen to exist; NoSuchBucket, a bare
// 404 to a GET and a 404 from whatever answers for a missing bucket fail
// Has and Get with a permanent error.
func TestNotFoundOnlyForMissingKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		h         http.HandlerFunc
		class     error  // of Get's errors
		text      string // in Get's errors
		hasAbsent bool   // Has reports the key absent (else fails like Get)
	}{
		{
			name: "key missing",
			h: func(w http.ResponseWriter, r *http.Request) {
				if isBucket(r) {
					_, _ = io.Copy(io.Discard, r.Body)
					return // HeadBucket: 200
				}
				s3Error(w, r, http.StatusNotFound, "NoSuchKey")
			},
			class: plugins.ErrNotFound, hasAbsent: true,
		},
		{
			name:  "bucket missing",
			h:     func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusNotFound, "NoSuchBucket") },
			class: plugins.ErrPermanent, text: `bucket "fake-bucket" does not exist`,
		},
		{
			name:  "bare 404 everywhere (a proxy)",
			h:     func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusNotFound, "") },
			class: plugins.ErrPermanent, text: "404",
		},
		{
			name: "bucket denied",
			h: func(w http.ResponseWriter, r *http.Request) {
				if isBucket(r) {
					s3Error(w, r, http.StatusForbidden, "AccessDenied")
					return
				}
				s3Error(w, r, http.StatusNotFound, "NoSuchBucket")
			},
			class: plugins.ErrPermanent, text: fakeBucket,
		},
		{
			name:  "another 404 code",
			h:     func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusNotFound, "NoSuchUpload") },
			class: plugins.ErrPermanent, text: "404",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tg := fakeTarget(t, tt.h)
			ctx := t.Context()
			has, err := tg.Has(ctx, []string{"k1", "k2"})
			switch {
			case tt.hasAbsent && (err != nil || has[0] || has[1]):
				t.Fatalf("Has = %v, %v; want both absent", has, err)
			case !tt.hasAbsent && err == nil:
				t.Fatalf("Has = %v without an error", has)
			case !tt.hasAbsent && (errors.Is(err, plugins.ErrNotFound) || plugins.Classify(err) != plugins.ClassPermanent || !strings.Contains(err.Error(), fakeBucket)):
				t.Fatalf("Has: %v (%v), want a permanent error naming the bucket", err, plugins.Classify(err))
			}
			for _, length := range []int64{-1, 0} { // a GET; a HEAD
				rc, _, err := tg.Get(ctx, "k1", 0, length)
				if err == nil {
					rc.Close()
					t.Fatalf("Get(length %d) succeeded", length)
				}
				if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.text) || tt.class != plugins.ErrNotFound && errors.Is(err, plugins.ErrNotFound) {
					t.Fatalf("Get(length %d): %v, want %v containing %q", length, err, tt.class, tt.text)
				}
			}
		})
	}
}

// listPage is a ListObjectsV2 answer.
func listPage(w http.ResponseWriter, keys []string, truncated bool, next string) {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>` + fakeBucket + `</Name>`)
	for _, k := range keys {
		fmt.Fprintf(&b, "<Contents><Key>p/%s</Key><Size>1</Size></Contents>", k)
	}
	fmt.Fprintf(&b, "<KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>%t</IsTruncated>", len(keys), truncated)
	if next != "" {
		fmt.Fprintf(&b, "<NextContinuationToken>%s</NextContinuationToken>", next)
	}
	b.WriteString("</ListBucketResult>")
	w.Header().Set("Content-Type", "application/xml")
	_, _ = io.WriteString(w, b.String())
}

// A listing ends only at a page that says it is complete: a page that
// says there is more but gives no continuation token, or gives one seen
// before, fails the listing instead of ending it early.
func TestListTruncation(t *testing.T) {
	t.Parallel()
	type page struct {
		keys      []string
		truncated bool
		next      string
	}
	tests := []struct {
		name  string
		pages []page // answered in turn
		want  []string
		text  string // of the error at the end; "" for none
	}{
		{
			name:  "complete",
			pages: []page{{[]string{"a", "b"}, true, "t1"}, {[]string{"c"}, false, ""}},
			want:  []string{"a", "b", "c"},
		},
		{
			name:  "truncated without a token",
			pages: []page{{[]string{"a", "b"}, true, ""}, {[]string{"c"}, false, ""}},
			want:  []string{"a", "b"},
			text:  "no continuation token",
		},
		{
			name:  "repeated token",
			pages: []page{{[]string{"a"}, true, "t1"}, {[]string{"b"}, true, "t1"}, {[]string{"c"}, false, ""}},
			want:  []string{"a", "b"},
			text:  `continuation token "t1" a second time`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int32
			tg := fakeTarget(t, func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				if r.URL.Query().Get("list-type") != "2" || i >= len(tt.pages) {
					s3Error(w, r, http.StatusBadRequest, "InvalidRequest")
					return
				}
				p := tt.pages[i]
				listPage(w, p.keys, p.truncated, p.next)
			})
			var keys []string
			var lerr error
			for o, err := range tg.List(t.Context(), "", "") {
				if err != nil {
					lerr = err
					break
				}
				keys = append(keys, o.Key)
			}
			if strings.Join(keys, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("List = %v, want %v", keys, tt.want)
			}
			switch {
			case tt.text == "" && lerr != nil:
				t.Fatalf("List: %v", lerr)
			case tt.text != "" && (lerr == nil || !errors.Is(lerr, plugins.ErrPermanent) || !strings.Contains(lerr.Error(), tt.text)):
				t.Fatalf("List ended with %v, want a permanent error containing %q", lerr, tt.text)
			}
		})
	}
}

// A ranged Get takes only a 206 whose Content-Range is the range asked
// for (clipped at the object's end): a server that ignores Range, or
// answers another range, fails the Get instead of handing out the wrong
// bytes.
func TestGetRangeAnswers(t *testing.T) {
	t.Parallel()
	obj := []byte("0123456789")
	// serve answers the bytes [first, last] of obj with status and
	// Content-Range cr ("" for none).
	serve := func(w http.ResponseWriter, status int, first, last int64, cr string) {
		if cr != "" {
			w.Header().Set("Content-Range", cr)
		}
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(status)
		_, _ = w.Write(obj[first : last+1])
	}
	honour := func(w http.ResponseWriter, r *http.Request) {
		rng := strings.TrimPrefix(r.Header.Get("Range"), "bytes=")
		if rng == "" {
			serve(w, http.StatusOK, 0, int64(len(obj))-1, "")
			return
		}
		a, b, _ := strings.Cut(rng, "-")
		first, _ := strconv.ParseInt(a, 10, 64)
		last := int64(len(obj)) - 1
		if b != "" {
			l, _ := strconv.ParseInt(b, 10, 64)
			last = min(last, l)
		}
		serve(w, http.StatusPartialContent, first, last, fmt.Sprintf("bytes %d-%d/%d", first, last, len(obj)))
	}
	ignore := func(w http.ResponseWriter, _ *http.Request) {
		serve(w, http.StatusOK, 0, int64(len(obj))-1, "")
	}
	tests := []struct {
		name           string
		h              http.HandlerFunc
		offset, length int64
		want           string // "" for an error
	}{
		{name: "honoured", h: honour, offset: 4, length: 3, want: "456"},
		{name: "honoured to the end", h: honour, offset: 4, length: -1, want: "456789"},
		{name: "honoured past the end", h: honour, offset: 4, length: 100, want: "456789"},
		{name: "whole object", h: ignore, offset: 0, length: -1, want: "0123456789"},
		{name: "ignored to the end", h: ignore, offset: 4, length: -1},
		{name: "ignored past the end", h: ignore, offset: 4, length: 100},
		{name: "ignored range", h: ignore, offset: 4, length: 3},
		{name: "another start", offset: 4, length: -1, h: func(w http.ResponseWriter, _ *http.Request) {
			serve(w, http.StatusPartialContent, 0, 5, "bytes 0-5/10")
		}},
		{name: "short of the end", offset: 4, length: -1, h: func(w http.ResponseWriter, _ *http.Request) {
			serve(w, http.StatusPartialContent, 4, 6, "bytes 4-6/10")
		}},
		{name: "short of the length", offset: 4, length: 5, h: func(w http.ResponseWriter, _ *http.Request) {
			serve(w, http.StatusPartialContent, 4, 6, "bytes 4-6/10")
		}},
		{name: "no Content-Range", offset: 4, length: 3, h: func(w http.ResponseWriter, _ *http.Request) {
			serve(w, http.StatusPartialContent, 4, 6, "")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tg := fakeTarget(t, tt.h)
			rc, n, err := tg.Get(t.Context(), "k", tt.offset, tt.length)
			if tt.want == "" {
				if err == nil {
					got, _ := io.ReadAll(rc)
					rc.Close()
					t.Fatalf("Get succeeded with %q (%d bytes)", got, n)
				}
				if !errors.Is(err, plugins.ErrPermanent) {
					t.Fatalf("Get: %v, want a permanent error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || string(got) != tt.want || n != int64(len(tt.want)) {
				t.Fatalf("Get = %q (announced %d), %v; want %q", got, n, err, tt.want)
			}
		})
	}
}

// A multipart Put that fails has the class of its own failure, not that
// of aborting the upload: an abort's 404 (NoSuchUpload after a Complete
// whose answer was lost, or NoSuchKey from a lax server) must not make
// the Put "not found".
func TestMultipartAbortErrorKeepsPutClass(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("x"), s3.MinPartSize+1) // two parts
	tests := []struct {
		name     string
		ifAbsent bool
		complete func(w http.ResponseWriter, r *http.Request)
		abort    string // the abort's error code (404)
		class    plugins.Class
	}{
		{
			name:     "abort NoSuchUpload",
			complete: func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusBadRequest, "InvalidPart") },
			abort:    "NoSuchUpload", class: plugins.ClassPermanent,
		},
		{
			name:     "abort NoSuchKey",
			complete: func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusBadRequest, "InvalidPart") },
			abort:    "NoSuchKey", class: plugins.ClassPermanent,
		},
		{
			name: "put-if-absent refused", ifAbsent: true,
			complete: func(w http.ResponseWriter, r *http.Request) {
				s3Error(w, r, http.StatusPreconditionFailed, "PreconditionFailed")
			},
			abort: "NoSuchKey", class: plugins.ClassAlreadyExists,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var aborts atomic.Int32
			tg := fakeTarget(t, func(w http.ResponseWriter, r *http.Request) {
				q := r.URL.Query()
				switch {
				case r.Method == http.MethodPost && q.Has("uploads"):
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "application/xml")
					fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><Bucket>%s</Bucket><Key>p/k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>`, fakeBucket)
				case r.Method == http.MethodPut && q.Has("partNumber"):
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set("ETag", `"e`+q.Get("partNumber")+`"`)
				case r.Method == http.MethodPost && q.Has("uploadId"):
					tt.complete(w, r)
				case r.Method == http.MethodDelete && q.Has("uploadId"):
					aborts.Add(1)
					s3Error(w, r, http.StatusNotFound, tt.abort)
				default:
					s3Error(w, r, http.StatusBadRequest, "InvalidRequest")
				}
			})
			put := tg.Put
			if tt.ifAbsent {
				put = tg.PutIfAbsent
			}
			err := put(t.Context(), "k", bytes.NewReader(data), int64(len(data)))
			if got := plugins.Classify(err); got != tt.class || !strings.Contains(fmt.Sprint(err), "aborting the upload failed") {
				t.Fatalf("Put: %v (%v), want %v mentioning the abort", err, got, tt.class)
			}
			if aborts.Load() != 1 {
				t.Fatalf("%d aborts, want 1", aborts.Load())
			}
		})
	}
}

// The conditional-write probe settles "no support" only on an answer
// about the header itself (a second conditional Put accepted, 501, 400
// InvalidArgument). Any other failure — a bucket not created yet, denied
// access — is an error and the next call probes again. Before, a probe
// that met NoSuchBucket cached "no support" for the target's lifetime, so
// PutIfAbsent kept failing with ErrUnsupported after the bucket was made.
func TestConditionalProbe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		first func(w http.ResponseWriter, r *http.Request) // the first probe's Puts
		want  plugins.ConditionalCreate                    // what the first Info reports; Unknown: an error
	}{
		{"bucket missing", func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusNotFound, "NoSuchBucket") }, plugins.ConditionalCreateUnknown},
		{"access denied", func(w http.ResponseWriter, r *http.Request) { s3Error(w, r, http.StatusForbidden, "AccessDenied") }, plugins.ConditionalCreateUnknown},
		{"not implemented", func(w http.ResponseWriter, r *http.Request) {
			s3Error(w, r, http.StatusNotImplemented, "NotImplemented")
		}, plugins.ConditionalCreateNone},
		{"header ignored", func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }, plugins.ConditionalCreateNone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var healthy atomic.Bool
			seen := make(map[string]bool)
			var mu sync.Mutex
			tg := fakeTargetMode(t, func(w http.ResponseWriter, r *http.Request) {
				if !healthy.Load() {
					if r.Method == http.MethodDelete {
						w.WriteHeader(http.StatusNoContent)
						return
					}
					tc.first(w, r)
					return
				}
				// A server that honours If-None-Match.
				_, _ = io.Copy(io.Discard, r.Body)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case r.Method == http.MethodPut && seen[r.URL.Path] && r.Header.Get("If-None-Match") == "*":
					s3Error(w, r, http.StatusPreconditionFailed, "PreconditionFailed")
				case r.Method == http.MethodPut:
					seen[r.URL.Path] = true
				case r.Method == http.MethodDelete:
					delete(seen, r.URL.Path)
					w.WriteHeader(http.StatusNoContent)
				}
			}, s3.ConditionalAuto)
			info, err := tg.Info(t.Context())
			switch {
			case tc.want == plugins.ConditionalCreateUnknown && err == nil:
				t.Fatalf("first Info = %+v, want an error", info)
			case tc.want != plugins.ConditionalCreateUnknown && (err != nil || info.ConditionalCreate != tc.want):
				t.Fatalf("first Info = %+v, %v; want %v", info, err, tc.want)
			}
			healthy.Store(true)
			want := plugins.ConditionalCreateAtomic
			if tc.want != plugins.ConditionalCreateUnknown {
				want = tc.want // settled: not probed again
			}
			if info, err := tg.Info(t.Context()); err != nil || info.ConditionalCreate != want {
				t.Fatalf("Info once the server answers = %+v, %v; want %v", info, err, want)
			}
		})
	}
}
