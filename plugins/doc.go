// Package plugins owns the backup-target contract: the Target Go interface
// and its domain types (target.go), the key grammar (key.go), the error
// classes (errors.go), the protocol buffers and committed generated code
// (proto/v1, `make proto`), the gRPC client and server shims (client.go,
// server.go, status.go) with the codec of their payload path (codec.go:
// protobuf on the wire, pooled buffers and no extra copies), the go-plugin
// glue with versioned handshake and AutoMTLS (plugin.go), and the host-side
// Manager (manager.go, remote.go):
// it starts built-ins as `strata plugin serve fs|s3` and external plugins
// as strata-target-<kind> from a plugin directory, restarts a plugin that
// dies, retries idempotent calls with bounded backoff (the rules are on
// Remote), and logs each plugin's standard error through the host's slog
// logger. Credentials (credentials.go) never appear in logs or errors.
// RoundTrip is what `strata target test` runs.
//
// It must not import any other Strata package outside plugins/ — in
// particular not snapshot, blockdev or backupd — and never the built-in
// targets (plugins/fs, plugins/s3), which depend on it.
package plugins
