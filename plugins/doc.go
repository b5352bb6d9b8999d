// Package plugins owns the backup-target contract: the Target Go interface
// and its domain types, the protocol buffers and committed generated code,
// the gRPC client and server shims, and the host-side plugin manager
// (discovery of strata-target-<name> executables, handshake, restart of dead
// plugins, retries of idempotent calls, error classification).
//
// It must not import any other Strata package outside plugins/ — in
// particular not snapshot, blockdev or backupd — and never the built-in
// targets (plugins/fs, plugins/s3), which depend on it.
//
// Not implemented yet: see issue 6.
package plugins
