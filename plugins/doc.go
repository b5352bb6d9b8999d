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
// # The local data plane (dataplane.go, pipes.go)
//
// Through gRPC a 4 MiB payload is encrypted, framed, copied and decrypted
// (AutoMTLS): 8–11 ms of CPU against 3.4–3.9 ms for the whole Put
// in-process, and a Get of 0.48 ms became 8.5–9.7 ms (benchmarks/NOTES.md,
// "Backup-target plugins"). So payloads may leave the stream for pipes,
// an optional fast path for plugins on the same host; the data messages
// stay the portable path, and the one every plugin that does not
// advertise the data plane keeps.
//
//   - Channel. At start the host makes a SOCK_SEQPACKET socketpair, both
//     ends close-on-exec, and the plugin inherits one end as descriptor 3
//     (exec.Cmd.ExtraFiles), named by DataPlaneEnv. Nothing listens, so
//     no other process can connect; only the host and that plugin hold the
//     socket, which makes it as private as the mTLS connection: whoever
//     could read a pipe of theirs could also ptrace the plugin. The plugin
//     checks the descriptor is such a socket, unsets the variable and
//     says in ConfigureResponse.pipe_data_plane that it serves it; only
//     then does the host use it (ManagerConfig.DisableDataPlane and
//     ServeConfig.DisableDataPlane turn it off).
//   - Put. The host makes a pipe (F_SETPIPE_SZ 1 MiB where allowed),
//     sends its read end with SCM_RIGHTS together with a random 128-bit
//     token, sends the PutHeader naming the token and the size, writes
//     the payload into the pipe (from the calling goroutine: the plugin
//     drains it concurrently, and no goroutine is left behind), closes it
//     and only then sends the commit. The plugin matches the token to the
//     pipe (either may come first; a call waits with its context, at most
//     claimWait), reads exactly size bytes and the pipe's end, then the
//     commit: fewer or more bytes, a missing commit, a pipe that never
//     came or a dead peer fail the Put, and the target, which commits only
//     after io.EOF, stores nothing. fs splices the pipe into its temporary
//     file (SpliceSource); other targets read it.
//   - Get. The mirror: the host sends the write end of a pipe with a
//     token named in GetRequest; the plugin sends the header (the length),
//     writes the range into the pipe — fs splices it from the file, page
//     references and no copy (FileRangeReader) — closes it and ends the
//     call. The host reads exactly the length, then checks that the call
//     ended without error and the pipe holds nothing more; a pipe ending
//     early is explained by the call's status (transient if the plugin
//     died, so Remote resumes the range as before).
//   - Objects as local files (fileplane.go). A target whose objects are
//     local files (FileTarget: fs) is offered as such in
//     ConfigureResponse.file_get and file_put. The host then makes no
//     gRPC call for a Get or a Put: it sends a request on the socket with
//     one end of a fresh socketpair attached, and the plugin answers on
//     that private socket — an open request on its receive loop (a local
//     open takes microseconds, and a hand-off cost a quarter of the round
//     trip), a create request on a goroutine of its own (it may fsync new
//     directories, then waits for the commit through the runtime's poller,
//     so a Put held open costs no thread). For a Get (open request:
//     offset, length, key) the answer is the object's file, read-only,
//     and the range it holds; the host checks the descriptor (a regular
//     file holding the whole range) and reads it with pread(2), as the
//     target would in-process; the reads stop with the call's context.
//     Objects are replaced by rename, never rewritten, so the descriptor
//     keeps the object the Get found. For a Put or PutIfAbsent (create
//     request: size, flags, key) the answer is the new object's empty
//     temporary file, open for writing; the host writes exactly size
//     bytes into it (starting writeback of each MiB, as fs does), closes
//     it and sends a commit on the private socket; the plugin checks the
//     file's size, fsyncs it, renames or links it into place, fsyncs the
//     directory and answers with the outcome. Closing the socket without
//     a commit — the host's data failed, its context ended, it died —
//     aborts the Put and removes the file; a host that closes it during
//     the commit cancels the commit's context. Errors carry their gRPC
//     code and text. A dead plugin closes the private socket: a transient
//     error, retried on the restarted plugin; its temporary file is left
//     like any Put's cut short. The plugin closes its plane before its
//     target, and the plane waits for the requests it is serving. Since
//     the host then does the file I/O itself, a hung filesystem (NFS)
//     blocks the host's reads and writes, not only the plugin's; the
//     call's context ends the waits on the plugin, not a stuck pread. The round trip is about 70–100 µs here
//     (two wake-ups of idle CPUs), against about 250 µs for a gRPC call
//     with its pipe, and the bytes are copied once, as in-process
//     (benchmarks/NOTES.md).
//   - Concurrency and failures. Every call has its own pipe and token;
//     they share the socket, whose messages stay whole (SEQPACKET). A
//     pipe no call claims is closed when the host reports the call failed
//     (a token without a descriptor) or after unclaimedTTL. A dead plugin
//     takes its pipe ends with it: the host's write fails with EPIPE or
//     its read ends early, the call fails transiently and is retried on
//     the restarted plugin, which gets a new socketpair; the old one is
//     closed with the process. A plugin that stops reading its socket (a
//     stopped process) fills it; the host then waits for room only as long
//     as the call's context, as it would for the gRPC call.
//
// Linux only (splice, F_SETPIPE_SZ, SCM_RIGHTS semantics), as the package
// already is (Pdeathsig).
//
// It must not import any other Strata package outside plugins/ — in
// particular not snapshot, blockdev or backupd — and never the built-in
// targets (plugins/fs, plugins/s3), which depend on it.
package plugins
