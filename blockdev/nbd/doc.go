// Package nbd owns Strata's NBD server: fixed newstyle negotiation, the
// export list (one export per volume, a read-only export per snapshot named
// "vol@snap"), and the transmission phase with many requests in flight per
// connection, out-of-order replies, multi-conn, FLUSH, FUA, TRIM,
// WRITE_ZEROES, structured replies and BLOCK_STATUS "base:allocation". It
// listens on a unix socket by default, TCP (with TLS available) on request.
// A bad request gets an NBD error reply; the connection and server stay up.
//
// The package serves blockdev.Volume and nothing else: among Strata packages
// it imports only blockdev. It must not import snapshot, the other frontends
// (fuse, attach), the agent, plugins or backupd. go-nbd supplies protocol
// constants and structs only; its server is not used.
//
// Not implemented yet: see issue 3.
package nbd
