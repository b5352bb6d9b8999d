// Package s3 owns the built-in S3 target: a plugins.Target over any S3 API,
// configured by a URL such as "s3://bucket/prefix?endpoint=...", with
// credentials from a file or the environment that are never logged. Its
// tests run against a real S3 server (versitygw) on loopback, never a mock.
//
// Among Strata packages it imports only plugins (and plugins/targettest from
// its tests). It must not import snapshot, blockdev or backupd.
//
// Not implemented yet: see issue 6.
package s3
