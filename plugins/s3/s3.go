package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/strata-block/strata/plugins"
)

// Kind is the plugin kind and Info().Kind of this target.
const Kind = "s3"

// probePrefix holds the objects of the conditional-write probe; keys never
// begin a segment with ".", so they are never listed or addressable.
const probePrefix = ".strata-probe/"

// hasConcurrency bounds the HEADs one Has batch runs at once.
const hasConcurrency = 16

// abortTimeout bounds aborting a failed multipart upload, which runs even
// when the Put's context has ended.
const abortTimeout = 30 * time.Second

// Target stores objects in an S3 bucket under a prefix.
type Target struct {
	cfg    Config
	client *awss3.Client
	closed atomic.Bool

	condMu sync.Mutex
	cond   plugins.ConditionalCreate // resolved mode; Unknown until probed
}

var _ plugins.Target = (*Target)(nil)

// Open is the plugins.OpenFunc of the s3 target: it parses the URL
// (ParseURL) and takes the keys from creds, or from the environment when
// creds has none. It does not contact the server.
func Open(_ context.Context, rawURL string, creds plugins.Credentials) (plugins.Target, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	k, err := resolveKeys(creds, os.Getenv)
	if err != nil {
		return nil, err
	}
	return New(cfg, k.access, k.secret, k.session), nil
}

// New returns a target for cfg with the given keys.
func New(cfg Config, accessKey, secretKey, sessionToken string) *Target {
	opts := awss3.Options{
		Region: cfg.Region,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: accessKey, SecretAccessKey: secretKey, SessionToken: sessionToken, Source: "strata"}, nil
		}),
		// Checksums only where the API requires them: the payload is
		// signed (SHA-256) anyway, and S3-compatible servers differ in
		// their support of the newer trailing checksums.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		HTTPClient: &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}},
	}
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
		opts.UsePathStyle = true
	}
	t := &Target{cfg: cfg, client: awss3.New(opts)}
	switch cfg.Conditional {
	case ConditionalNative:
		t.cond = plugins.ConditionalCreateAtomic
	case ConditionalNone:
		t.cond = plugins.ConditionalCreateNone
	}
	return t
}

func (t *Target) check() error {
	if t.closed.Load() {
		return plugins.ErrClosed
	}
	return nil
}

// errBare404 marks a 404 without an S3 error code: the answer to a HEAD
// (which has no body), or a bare 404 from something that is not S3 (a
// proxy, a wrong endpoint path). It does not say what is missing — the
// key, the bucket or the whole service — so by itself it is a permanent
// error, never ErrNotFound; Has and Get's HEADs make it "absent" only
// once the bucket is seen to exist (bucketExists).
var errBare404 = errors.New("404 without an S3 error code")

// classify gives an S3 error its class: missing keys, failed
// preconditions, throttling and server errors, and failures to reach the
// server at all (transient). Only NoSuchKey is ErrNotFound: any other 404
// — NoSuchBucket, NoSuchUpload, a 404 with no code — is permanent, so a
// missing bucket or a misrouted request never reads as "no object".
func (t *Target) classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var nsk *types.NoSuchKey
	if errors.As(err, &nsk) {
		return fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
	}
	var nf *types.NotFound
	if errors.As(err, &nf) {
		return fmt.Errorf("%w: %w", errBare404, plugins.Permanent(err))
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey":
			return fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
		case "NotFound":
			// The SDK's code for a 404 whose body gave none.
			return fmt.Errorf("%w: %w", errBare404, plugins.Permanent(err))
		case "NoSuchBucket":
			return fmt.Errorf("bucket %q does not exist: %w", t.cfg.Bucket, plugins.Permanent(err))
		case "PreconditionFailed":
			return fmt.Errorf("%w: %w", plugins.ErrAlreadyExists, err)
		case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "ConditionalRequestConflict":
			return plugins.Transient(err)
		}
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch s := re.HTTPStatusCode(); {
		case s == http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %w", plugins.ErrAlreadyExists, err)
		case s == http.StatusTooManyRequests || s == http.StatusConflict || s >= 500:
			return plugins.Transient(err)
		}
		return plugins.Permanent(err)
	}
	// No HTTP response at all: the server could not be reached or the
	// connection broke.
	return plugins.Transient(err)
}

// Info reports the conditional-create mode, probing the server once if the
// URL asked for auto.
func (t *Target) Info(ctx context.Context) (plugins.Info, error) {
	if err := t.check(); err != nil {
		return plugins.Info{}, err
	}
	cc, err := t.conditional(ctx)
	if err != nil {
		return plugins.Info{}, err
	}
	return plugins.Info{Kind: Kind, ConditionalCreate: cc, MaxObjectSize: t.cfg.PartSize * maxParts, MaxBatch: plugins.MaxBatch}, nil
}

// conditional returns the resolved conditional-create mode. In auto mode
// the first call probes: a PutObject with If-None-Match: * on a fresh key,
// then the same again, which a server that honours the header refuses with
// 412. A server that ignores it accepts both: that is what makes the
// header unsafe to rely on without the probe. The probe object is deleted.
func (t *Target) conditional(ctx context.Context) (plugins.ConditionalCreate, error) {
	t.condMu.Lock()
	defer t.condMu.Unlock()
	if t.cond != plugins.ConditionalCreateUnknown {
		return t.cond, nil
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	key := t.cfg.Prefix + probePrefix + hex.EncodeToString(id[:])
	putOnce := func() error {
		_, err := t.client.PutObject(ctx, &awss3.PutObjectInput{
			Bucket: &t.cfg.Bucket, Key: &key, Body: bytes.NewReader(nil), ContentLength: aws.Int64(0), IfNoneMatch: aws.String("*"),
		})
		return err
	}
	raw := putOnce()
	err := t.classify(raw)
	if err == nil {
		raw = putOnce()
		err = t.classify(raw)
		// Best effort: a leftover probe is invisible anyway.
		_, _ = t.client.DeleteObject(context.WithoutCancel(ctx), &awss3.DeleteObjectInput{Bucket: &t.cfg.Bucket, Key: &key})
		switch {
		case errors.Is(err, plugins.ErrAlreadyExists):
			t.cond = plugins.ConditionalCreateAtomic
			return t.cond, nil
		case err == nil:
			raw, err = nil, nil // the header was ignored: no support
		}
	}
	if err != nil && !refusesConditional(raw) {
		// Not an answer about the header (a missing bucket, denied
		// access, an unreachable server): nothing is learnt, and the
		// next call probes again.
		return plugins.ConditionalCreateUnknown, fmt.Errorf("s3 probing conditional writes: %w", err)
	}
	t.cond = plugins.ConditionalCreateNone
	if t.cfg.Conditional == ConditionalCheckThenPut {
		t.cond = plugins.ConditionalCreateCheckThenPut
	}
	return t.cond, nil
}

// refusesConditional reports whether err is a server's refusal of the
// If-None-Match header itself: 501 Not Implemented, or a 400 naming the
// request or an argument invalid. Only such an answer (or a second
// conditional Put accepted) settles that the server lacks conditional
// writes.
func refusesConditional(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NotImplemented", "InvalidArgument", "InvalidRequest":
			return true
		}
	}
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotImplemented
}

var partPool sync.Pool // *[]byte of the part size

func (t *Target) partBuffer() *[]byte {
	if b, ok := partPool.Get().(*[]byte); ok && int64(len(*b)) == t.cfg.PartSize {
		return b
	}
	b := make([]byte, t.cfg.PartSize)
	return &b
}

// Put stores the object: one PutObject up to the part size, a multipart
// upload above it. S3 makes an object visible only when its PutObject or
// CompleteMultipartUpload succeeds, so a reader sees all or nothing; a
// failed multipart upload is aborted so no parts linger.
func (t *Target) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return t.put(ctx, "put", key, r, size, false)
}

// PutIfAbsent is Put with If-None-Match: * (on PutObject, or on
// CompleteMultipartUpload for large objects) when the server supports it;
// see Config.Conditional for the other modes.
func (t *Target) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := plugins.ValidateKey(key); err != nil {
		return err
	}
	if err := t.check(); err != nil {
		return err
	}
	cc, err := t.conditional(ctx)
	if err != nil {
		return err
	}
	switch cc {
	case plugins.ConditionalCreateAtomic:
		return t.put(ctx, "put-if-absent", key, r, size, true)
	case plugins.ConditionalCreateCheckThenPut:
		has, err := t.Has(ctx, []string{key})
		if err != nil {
			return err
		}
		if has[0] {
			return fmt.Errorf("put-if-absent %q: %w", key, plugins.ErrAlreadyExists)
		}
		return t.put(ctx, "put-if-absent", key, r, size, false)
	}
	return fmt.Errorf("put-if-absent %q: the server does not support conditional writes (If-None-Match): %w", key, plugins.ErrUnsupported)
}

func (t *Target) put(ctx context.Context, op, key string, r io.Reader, size int64, ifAbsent bool) error {
	if err := plugins.ValidateKey(key); err != nil {
		return err
	}
	if err := t.check(); err != nil {
		return err
	}
	if size < 0 || size > t.cfg.PartSize*maxParts {
		return fmt.Errorf("%s %q: size %d outside 0..%d: %w", op, key, size, t.cfg.PartSize*maxParts, plugins.ErrPermanent)
	}
	full := t.cfg.Prefix + key
	src := plugins.SizedReader(r, size)
	var cond *string
	if ifAbsent {
		cond = aws.String("*")
	}
	if size <= t.cfg.PartSize {
		// Read it all (and the source's end, which across the plugin
		// boundary is the host's commit) before sending anything.
		buf := make([]byte, size)
		if _, err := io.ReadFull(src, buf); err != nil {
			return fmt.Errorf("%s %q: reading the data: %w", op, key, err)
		}
		if n, err := src.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s %q: reading the data: %w", op, key, cmpErr(err))
		}
		_, err := t.client.PutObject(ctx, &awss3.PutObjectInput{
			Bucket: &t.cfg.Bucket, Key: &full, Body: bytes.NewReader(buf), ContentLength: aws.Int64(size), IfNoneMatch: cond,
		})
		if err != nil {
			return fmt.Errorf("%s %q: %w", op, key, t.classify(err))
		}
		return nil
	}
	return t.multipart(ctx, op, key, full, src, cond)
}

func cmpErr(err error) error {
	if err == nil {
		return fmt.Errorf("more data than the size: %w", plugins.ErrPermanent)
	}
	return err
}

// multipart uploads src in parts of the part size and completes the
// upload only after src has ended; on any failure it aborts the upload.
func (t *Target) multipart(ctx context.Context, op, key, full string, src io.Reader, cond *string) (err error) {
	up, err := t.client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: &t.cfg.Bucket, Key: &full})
	if err != nil {
		return fmt.Errorf("%s %q: starting the multipart upload: %w", op, key, t.classify(err))
	}
	defer func() {
		if err == nil {
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		if _, aerr := t.client.AbortMultipartUpload(actx, &awss3.AbortMultipartUploadInput{Bucket: &t.cfg.Bucket, Key: &full, UploadId: up.UploadId}); aerr != nil {
			// %v: the Put's error keeps its own class alone. The abort's
			// would otherwise join it, and win in Classify if it were
			// checked first — a NoSuchUpload because a Complete whose
			// answer was lost did succeed, say.
			err = fmt.Errorf("%w (and aborting the upload failed: %v)", err, t.classify(aerr))
		}
	}()
	bp := t.partBuffer()
	defer partPool.Put(bp)
	var parts []types.CompletedPart
	for n := int32(1); ; n++ {
		m, rerr := fillPart(src, *bp)
		if m > 0 {
			res, err := t.client.UploadPart(ctx, &awss3.UploadPartInput{
				Bucket: &t.cfg.Bucket, Key: &full, UploadId: up.UploadId, PartNumber: aws.Int32(n),
				Body: bytes.NewReader((*bp)[:m]), ContentLength: aws.Int64(int64(m)),
			})
			if err != nil {
				return fmt.Errorf("%s %q: part %d: %w", op, key, n, t.classify(err))
			}
			parts = append(parts, types.CompletedPart{ETag: res.ETag, PartNumber: aws.Int32(n)})
		}
		if rerr == io.EOF { //nolint:errorlint // fillPart returns the reader's io.EOF unwrapped
			break
		}
		if rerr != nil {
			return fmt.Errorf("%s %q: reading the data: %w", op, key, rerr)
		}
	}
	_, err = t.client.CompleteMultipartUpload(ctx, &awss3.CompleteMultipartUploadInput{
		Bucket: &t.cfg.Bucket, Key: &full, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}, IfNoneMatch: cond,
	})
	if err != nil {
		return fmt.Errorf("%s %q: completing the multipart upload: %w", op, key, t.classify(err))
	}
	return nil
}

// fillPart reads into buf until it is full or r fails, returning r's error
// (io.EOF at its end) unchanged.
func fillPart(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Get reads the range with one GetObject (a Range header unless it is the
// whole object). An offset at the object's end yields nothing, as S3
// refuses such a range (416) and a HEAD then tells the two cases apart.
func (t *Target) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	if err := plugins.ValidateKey(key); err != nil {
		return nil, 0, err
	}
	if err := t.check(); err != nil {
		return nil, 0, err
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("get %q: negative offset %d: %w", key, offset, plugins.ErrInvalidRange)
	}
	full := t.cfg.Prefix + key
	in := &awss3.GetObjectInput{Bucket: &t.cfg.Bucket, Key: &full}
	switch {
	case length == 0:
		return t.emptyRange(ctx, key, offset)
	case length > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+length-1))
	case offset > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	out, err := t.client.GetObject(ctx, in)
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusRequestedRangeNotSatisfiable {
			return t.emptyRange(ctx, key, offset)
		}
		return nil, 0, fmt.Errorf("get %q: %w", key, t.classify(err))
	}
	n := aws.ToInt64(out.ContentLength)
	if n < 0 || length >= 0 && n > length {
		out.Body.Close()
		return nil, 0, fmt.Errorf("get %q: the server answered %d bytes for a range of %d: %w", key, n, length, plugins.ErrPermanent)
	}
	if in.Range != nil {
		if err := checkRange(out, offset, length, n); err != nil {
			out.Body.Close()
			return nil, 0, fmt.Errorf("get %q: the answer to Range %s: %w", key, *in.Range, err)
		}
	}
	return &body{t: t, rc: out.Body, key: key, remaining: n}, n, nil
}

// checkRange checks the answer to a ranged GetObject of n bytes: a 206
// whose Content-Range starts at offset and spans the n bytes, which reach
// the object's end if length < 0 and are otherwise the length asked for,
// or less only where the object ends. A server (or a proxy) that ignores
// Range answers 200 with the object from its start: without this check
// those would be the bytes read.
func checkRange(out *awss3.GetObjectOutput, offset, length, n int64) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, plugins.ErrPermanent)...)
	}
	if raw, ok := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response); ok && raw.StatusCode != http.StatusPartialContent {
		return bad("status %d, not 206 Partial Content (the server ignored the range?)", raw.StatusCode)
	}
	cr := aws.ToString(out.ContentRange)
	first, last, total, ok := parseContentRange(cr)
	switch {
	case !ok:
		return bad("Content-Range %q, want bytes FIRST-LAST/SIZE", cr)
	case first != offset:
		return bad("Content-Range %q starts at %d, not %d", cr, first, offset)
	case last-first+1 != n:
		return bad("Content-Range %q for %d bytes of body", cr, n)
	case total < 0:
		// The size is unknown ("*"): n <= length is all there is to check.
		return nil
	case last >= total:
		return bad("Content-Range %q ends past the object's size", cr)
	}
	want := total - offset
	if length >= 0 {
		want = min(want, length)
	}
	if n != want {
		return bad("Content-Range %q: %d bytes where the range asked of a %d-byte object yields %d", cr, n, total, want)
	}
	return nil
}

// parseContentRange parses "bytes FIRST-LAST/SIZE" (SIZE may be "*",
// returned as -1).
func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	total = -1
	var err3 error
	if size != "*" {
		total, err3 = strconv.ParseInt(size, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || size != "*" && total < 0 {
		return 0, 0, 0, false
	}
	return first, last, total, true
}

// emptyRange answers a Get that yields no bytes: the object must exist and
// offset must not pass its end.
func (t *Target) emptyRange(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
	full := t.cfg.Prefix + key
	h, err := t.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &t.cfg.Bucket, Key: &full})
	if err = t.classify(err); errors.Is(err, errBare404) {
		if berr := t.bucketExists(ctx); berr != nil {
			return nil, 0, fmt.Errorf("get %q: a HEAD answered 404, but: %w", key, berr)
		}
		err = fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get %q: %w", key, err)
	}
	if size := aws.ToInt64(h.ContentLength); offset > size {
		return nil, 0, fmt.Errorf("get %q: offset %d of a %d-byte object: %w", key, offset, size, plugins.ErrInvalidRange)
	}
	return io.NopCloser(bytes.NewReader(nil)), 0, nil
}

// body checks that a response body yields its announced length.
type body struct {
	t         *Target
	rc        io.ReadCloser
	key       string
	remaining int64
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.remaining -= int64(n)
	switch {
	case errors.Is(err, io.EOF) && b.remaining > 0:
		return n, fmt.Errorf("get %q: body ended %d bytes short: %w", b.key, b.remaining, plugins.Transient(io.ErrUnexpectedEOF))
	case err != nil && !errors.Is(err, io.EOF):
		return n, fmt.Errorf("get %q: %w", b.key, b.t.classify(err))
	}
	return n, err
}

func (b *body) Close() error { return b.rc.Close() }

// Has HEADs the keys, several at a time. A HEAD's 404 has no body, so it
// cannot tell a missing key from a missing bucket (or a proxy's 404): if
// any key answered 404, the bucket is HEADed once, after them, and the
// keys are reported absent only if it exists (bucketExists).
func (t *Target) Has(ctx context.Context, keys []string) ([]bool, error) {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return nil, err
		}
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	out := make([]bool, len(keys))
	errs := make([]error, len(keys))
	var absent atomic.Int64 // keys that answered 404
	sem := make(chan struct{}, hasConcurrency)
	var wg sync.WaitGroup
	for i, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			full := t.cfg.Prefix + k
			_, err := t.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &t.cfg.Bucket, Key: &full})
			switch err = t.classify(err); {
			case err == nil:
				out[i] = true
			case errors.Is(err, errBare404):
				absent.Add(1)
			default:
				errs[i] = fmt.Errorf("has %q: %w", k, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if n := absent.Load(); n > 0 {
		if err := t.bucketExists(ctx); err != nil {
			return nil, fmt.Errorf("has: %d of %d keys answered 404, but: %w", n, len(keys), err)
		}
	}
	return out, nil
}

// bucketExists HEADs the bucket, which must follow the HEADs of objects
// that answered 404 for those to mean "absent": S3 deletes only an empty
// bucket, so a bucket there after the 404s held none of those keys then
// even if it was deleted and made again in between.
//
// The answer is deliberately not cached, although a cache for the
// target's lifetime would save this request: a bucket seen once and
// deleted (or moved, or made unreachable through a proxy) later would
// then turn every key into "absent" — exactly what this guards against,
// since callers act on absence (GC deleting an index whose pack Has
// reports missing). The cost is one HEAD per Has batch, or per empty Get,
// that met a 404, not one per key.
func (t *Target) bucketExists(ctx context.Context) error {
	_, err := t.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &t.cfg.Bucket})
	if err = t.classify(err); errors.Is(err, errBare404) {
		return fmt.Errorf("bucket %q does not exist (its HEAD answered 404): %w", t.cfg.Bucket, err)
	}
	if err != nil {
		return fmt.Errorf("bucket %q: confirming it exists: %w", t.cfg.Bucket, err)
	}
	return nil
}

// List pages through ListObjectsV2, which returns keys in byte order.
func (t *Target) List(ctx context.Context, prefix, startAfter string) iter.Seq2[plugins.ObjectInfo, error] {
	return func(yield func(plugins.ObjectInfo, error) bool) {
		if err := plugins.ValidatePrefix(prefix); err != nil {
			yield(plugins.ObjectInfo{}, err)
			return
		}
		if err := t.check(); err != nil {
			yield(plugins.ObjectInfo{}, err)
			return
		}
		in := &awss3.ListObjectsV2Input{Bucket: &t.cfg.Bucket, Prefix: aws.String(t.cfg.Prefix + prefix), MaxKeys: aws.Int32(1000)}
		if startAfter != "" {
			in.StartAfter = aws.String(t.cfg.Prefix + startAfter)
		}
		// Not the SDK's paginator: it ends the listing, without an error,
		// at a page that says it is truncated but gives no continuation
		// token (or repeats one), and a listing cut short looks complete.
		seen := make(map[string]bool)
		for {
			page, err := t.client.ListObjectsV2(ctx, in)
			if err != nil {
				yield(plugins.ObjectInfo{}, fmt.Errorf("list %q: %w", prefix, t.classify(err)))
				return
			}
			for _, o := range page.Contents {
				k, ok := strings.CutPrefix(aws.ToString(o.Key), t.cfg.Prefix)
				if !ok || k <= startAfter || plugins.ValidateKey(k) != nil {
					continue // probes, and anything not written as a key
				}
				if !yield(plugins.ObjectInfo{Key: k, Size: aws.ToInt64(o.Size)}, nil) {
					return
				}
			}
			if !aws.ToBool(page.IsTruncated) {
				return
			}
			next := aws.ToString(page.NextContinuationToken)
			switch {
			case next == "":
				yield(plugins.ObjectInfo{}, fmt.Errorf("list %q: the server says the listing goes on but gives no continuation token: %w", prefix, plugins.ErrPermanent))
				return
			case seen[next]:
				yield(plugins.ObjectInfo{}, fmt.Errorf("list %q: the server gave continuation token %q a second time: %w", prefix, next, plugins.ErrPermanent))
				return
			}
			seen[next] = true
			in.ContinuationToken = aws.String(next)
		}
	}
}

// Delete removes the keys with one DeleteObjects call per batch of at most
// MaxBatch (S3 takes 1000); missing keys are not errors.
func (t *Target) Delete(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := plugins.ValidateKey(k); err != nil {
			return err
		}
	}
	if err := t.check(); err != nil {
		return err
	}
	for len(keys) > 0 {
		batch := keys[:min(len(keys), plugins.MaxBatch)]
		keys = keys[len(batch):]
		ids := make([]types.ObjectIdentifier, len(batch))
		for i, k := range batch {
			ids[i] = types.ObjectIdentifier{Key: aws.String(t.cfg.Prefix + k)}
		}
		out, err := t.client.DeleteObjects(ctx, &awss3.DeleteObjectsInput{
			Bucket: &t.cfg.Bucket, Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return fmt.Errorf("delete: %w", t.classify(err))
		}
		var errs []error
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			errs = append(errs, fmt.Errorf("delete %q: %s: %s: %w", strings.TrimPrefix(aws.ToString(e.Key), t.cfg.Prefix), aws.ToString(e.Code), aws.ToString(e.Message), deleteClass(aws.ToString(e.Code))))
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

func deleteClass(code string) error {
	switch code {
	case "SlowDown", "InternalError", "ServiceUnavailable":
		return plugins.ErrTransient
	}
	return plugins.ErrPermanent
}

// Close releases idle connections; it is idempotent.
func (t *Target) Close() error {
	t.closed.Store(true)
	return nil
}
