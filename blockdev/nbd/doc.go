// Package nbd owns Strata's NBD server: fixed newstyle negotiation, the
// export list, and the transmission phase with many requests in flight per
// connection and out-of-order replies.
//
// What it serves. An Exports registry names the devices (blockdev.Volume):
// one export per volume ("vol") and a read-only export per snapshot
// ("vol@snap"). The agent supplies the registry; MapExports is a fixed
// in-memory one for tests and tools. Concurrent connections to one name
// share one device, so FLUSH on any connection covers writes completed on
// all of them and the server advertises NBD_FLAG_CAN_MULTI_CONN.
//
// Negotiation: NBD_OPT_EXPORT_NAME, LIST, INFO and GO (NBD_INFO_EXPORT,
// NBD_INFO_BLOCK_SIZE with minimum 1, preferred 4096, maximum MaxPayload,
// and NBD_INFO_NAME/DESCRIPTION when asked), ABORT, STRUCTURED_REPLY,
// LIST/SET_META_CONTEXT for "base:allocation", and STARTTLS with X.509
// certificates (Options.TLSConfig; Options.RequireTLS for FORCEDTLS).
// TLS-PSK is not supported: Go's crypto/tls has no PSK cipher suites, so a
// PSK client's handshake fails and the connection is closed; use
// certificates. Unknown exports get NBD_REP_ERR_UNKNOWN and unknown
// options NBD_REP_ERR_UNSUP. Extended headers are not offered.
//
// Transmission: one goroutine per connection decodes requests (reading a
// write's payload into a pooled buffer). It executes READs and WRITEs of
// up to 1 MiB itself, sending the replies of the requests one read(2)
// took in together in one writev(2), and hands the other requests to a
// bounded pool of workers; a device call that keeps the reader more than
// 50 µs makes another goroutine take over reading, so a slow request
// never holds up the rest. When the socket is empty the reader keeps
// trying for Options.ReadSpin (50 µs) before it parks in the poller
// (spin.go). Replies are written whole under a lock, in
// completion order. READ (structured replies with OFFSET_HOLE chunks for holes and
// zero extents in reads of 64 KiB or more, unless DF), WRITE with FUA,
// FLUSH, TRIM, WRITE_ZEROES (NO_HOLE zeroes, otherwise the range may be
// trimmed; FAST_ZERO is always honoured because Strata zeroes in
// metadata), BLOCK_STATUS and DISC. Errors: a read, trim or block status
// past the end or a request over MaxPayload gets EINVAL, a write or write
// zeroes past the end ENOSPC (as the specification says), writes to a
// read-only export EPERM, device ENOSPC/EDQUOT/EFBIG ENOSPC, other device
// failures EIO; the connection stays up. A wrong request magic, or a
// write payload over 4×MaxPayload, closes that connection only. The bytes
// of payload in flight per connection are capped (MaxInFlightBytes): the
// reader waits for replies to drain. A client that stops reading its
// replies is cut off once a reply write has made no progress for
// ReplyTimeout (2 min; a watchdog checks, no deadline per write; replies
// over 4 MiB go out in 4 MiB pieces, each progress), so it cannot keep
// its export in use for good.
//
// Listeners: ListenUnix (the default) and ListenTCP (opt-in); Serve on
// each. At MaxConnections (256) connections in transmission, NBD_OPT_GO
// is refused with NBD_REP_ERR_POLICY and a message; handshakes do not
// count. Shutdown stops accepting, lets requests in flight finish,
// flushes the exports written through each connection, and closes.
//
// The package serves blockdev.Volume and nothing else: among Strata packages
// it imports only blockdev. It must not import snapshot, the other frontends
// (fuse, attach), the agent, plugins or backupd. go-nbd supplies protocol
// constants and structs only; its server is not used.
package nbd
