// Package targettest owns the conformance suite every plugins.Target must
// pass: given a factory for a fresh target, it checks Put atomicity and
// idempotence, conditional create, ranged streamed Get, batched Has and
// Delete, streamed List by prefix, error classification, and that a plugin
// killed mid-Put leaves no partial object visible. Optional capabilities are
// skipped only when the target reports them unsupported.
//
// Among Strata packages it imports only plugins. It must not import any
// target implementation (plugins/fs, plugins/s3 call it, not the other way
// round), nor snapshot, blockdev or backupd. Only tests import it.
//
// Not implemented yet: see issue 6.
package targettest
