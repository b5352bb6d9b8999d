// Package s3 owns the built-in S3 target: a plugins.Target over any S3 API
// (AWS, versitygw, MinIO, Ceph RGW, ...) through aws-sdk-go-v2, configured
// by a URL such as
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1
//
// (see ParseURL; a custom endpoint uses path-style addressing), with the
// keys AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optionally
// AWS_SESSION_TOKEN) from the credentials the host passes — a file of
// NAME=value lines read by plugins.LoadCredentialsFile — or else from the
// environment. Credentials are never logged nor put in errors.
//
// Put is atomic because S3 is: an object appears only when its PutObject
// or CompleteMultipartUpload succeeds. Objects up to the part size (16 MiB
// by default) go in one PutObject; larger ones in a multipart upload that
// is aborted on any failure. A plugin killed mid-upload cannot abort: its
// parts stay invisible but billed until a bucket lifecycle rule
// (AbortIncompleteMultipartUpload, recommended) removes them.
//
// PutIfAbsent sends If-None-Match: * (on PutObject, or on
// CompleteMultipartUpload for large objects). Servers that ignore the
// header would let two creators both win, so by default (conditional=auto)
// the target probes once — the same conditional PutObject twice on a
// scratch key must fail the second time with 412 — and without support
// PutIfAbsent returns plugins.ErrUnsupported. conditional=check-then-put
// opts into HEAD-then-PUT, which races (both creators may succeed, the later
// object winning) and says so in Info; callers must then fence.
//
// Only NoSuchKey means "no object" (plugins.ErrNotFound). Any other 404 —
// NoSuchBucket (an error naming the bucket), NoSuchUpload, a proxy's bare
// 404 — is permanent, so a missing bucket or a misrouted request never
// reads as a missing object, which callers act on. A HEAD's 404 has no
// body to tell them apart: Has (and a Get of no bytes, which HEADs) then
// HEADs the bucket, after the objects, and reports the keys absent only
// if it exists. That answer is not cached: a bucket deleted later must
// not turn every key absent (bucketExists). A listing ends only at a page
// that says it is complete; a page that says there is more without a new
// continuation token fails it. A ranged Get takes only a 206 whose
// Content-Range is the range asked for.
//
// Its tests run against a real S3 server (versitygw, installed by
// scripts/deps.sh) on loopback; only answers a real server does not give
// (a bare 404, a truncated page without a token, an ignored Range, a
// failing abort) come from an httptest fake (fake_test.go).
//
// Among Strata packages it imports only plugins (and plugins/targettest from
// its tests). It must not import snapshot, blockdev or backupd.
package s3
