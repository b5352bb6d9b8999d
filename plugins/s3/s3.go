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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
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

// classify gives an S3 error its class: missing keys, failed
// preconditions, throttling and server errors, and failures to reach the
// server at all (transient).
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
		case "PreconditionFailed":
			return fmt.Errorf("%w: %w", plugins.ErrAlreadyExists, err)
		case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "ConditionalRequestConflict":
			return plugins.Transient(err)
		}
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch s := re.HTTPStatusCode(); {
		case s == http.StatusNotFound:
			return fmt.Errorf("%w: %w", plugins.ErrNotFound, err)
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
		return classify(err)
	}
	err := putOnce()
	if err == nil {
		err = putOnce()
		// Best effort: a leftover probe is invisible anyway.
		_, _ = t.client.DeleteObject(context.WithoutCancel(ctx), &awss3.DeleteObjectInput{Bucket: &t.cfg.Bucket, Key: &key})
		switch {
		case errors.Is(err, plugins.ErrAlreadyExists):
			t.cond = plugins.ConditionalCreateAtomic
			return t.cond, nil
		case err == nil:
			err = errors.New("the server accepted a second If-None-Match: * PutObject on the same key")
		}
	}
	if plugins.Classify(err) == plugins.ClassTransient {
		return plugins.ConditionalCreateUnknown, fmt.Errorf("s3 probing conditional writes: %w", err)
	}
	t.cond = plugins.ConditionalCreateNone
	if t.cfg.Conditional == ConditionalCheckThenPut {
		t.cond = plugins.ConditionalCreateCheckThenPut
	}
	return t.cond, nil
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
			return fmt.Errorf("%s %q: %w", op, key, classify(err))
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
		return fmt.Errorf("%s %q: starting the multipart upload: %w", op, key, classify(err))
	}
	defer func() {
		if err == nil {
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		if _, aerr := t.client.AbortMultipartUpload(actx, &awss3.AbortMultipartUploadInput{Bucket: &t.cfg.Bucket, Key: &full, UploadId: up.UploadId}); aerr != nil {
			err = fmt.Errorf("%w (and aborting the upload failed: %w)", err, classify(aerr))
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
				return fmt.Errorf("%s %q: part %d: %w", op, key, n, classify(err))
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
		return fmt.Errorf("%s %q: completing the multipart upload: %w", op, key, classify(err))
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
		return nil, 0, fmt.Errorf("get %q: %w", key, classify(err))
	}
	n := aws.ToInt64(out.ContentLength)
	if n < 0 || length >= 0 && n > length {
		out.Body.Close()
		return nil, 0, fmt.Errorf("get %q: the server answered %d bytes for a range of %d: %w", key, n, length, plugins.ErrPermanent)
	}
	return &body{rc: out.Body, key: key, remaining: n}, n, nil
}

// emptyRange answers a Get that yields no bytes: the object must exist and
// offset must not pass its end.
func (t *Target) emptyRange(ctx context.Context, key string, offset int64) (io.ReadCloser, int64, error) {
	full := t.cfg.Prefix + key
	h, err := t.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &t.cfg.Bucket, Key: &full})
	if err != nil {
		return nil, 0, fmt.Errorf("get %q: %w", key, classify(err))
	}
	if size := aws.ToInt64(h.ContentLength); offset > size {
		return nil, 0, fmt.Errorf("get %q: offset %d of a %d-byte object: %w", key, offset, size, plugins.ErrInvalidRange)
	}
	return io.NopCloser(bytes.NewReader(nil)), 0, nil
}

// body checks that a response body yields its announced length.
type body struct {
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
		return n, fmt.Errorf("get %q: %w", b.key, classify(err))
	}
	return n, err
}

func (b *body) Close() error { return b.rc.Close() }

// Has HEADs the keys, several at a time.
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
	sem := make(chan struct{}, hasConcurrency)
	var wg sync.WaitGroup
	for i, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			full := t.cfg.Prefix + k
			_, err := t.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &t.cfg.Bucket, Key: &full})
			if err = classify(err); err != nil && !errors.Is(err, plugins.ErrNotFound) {
				errs[i] = fmt.Errorf("has %q: %w", k, err)
			}
			out[i] = err == nil
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
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
		p := awss3.NewListObjectsV2Paginator(t.client, in)
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				yield(plugins.ObjectInfo{}, fmt.Errorf("list %q: %w", prefix, classify(err)))
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
			return fmt.Errorf("delete: %w", classify(err))
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
