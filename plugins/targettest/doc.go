// Package targettest owns the conformance suite every plugins.Target must
// pass (Run): Info, Put of 0 B / 1 B / 1 MiB+1 / 64 MiB, atomicity and
// idempotence, failed and cancelled Puts storing nothing, 16 concurrent
// Puts, ranged Get, conditional create and its race (exactly one winner),
// batched Has and Delete, List of 10,000 keys in byte order by prefix and
// start-after, hostile keys rejected, Close. RunCrash kills a plugin
// process mid-Put and mid-Get and checks that no partial object is visible
// and the manager's retry succeeds. Optional capabilities are skipped only
// when the target reports them unsupported. Memory is the in-memory
// reference target; Main lets a test binary double as a plugin; Bench
// compares a target in-process and through its plugin.
//
// Among Strata packages it imports only plugins. It must not import any
// target implementation (plugins/fs, plugins/s3 call it, not the other way
// round), nor snapshot, blockdev or backupd. Only tests import it.
package targettest
