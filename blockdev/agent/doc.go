// Package agent owns the per-host agent daemon: its control API (a unix
// socket with mode 0600 by default; TCP only with TLS and a token), its
// persistent state, and its Prometheus metrics. It opens volumes through
// blockdev's Manager and serves them with the nbd and fuse frontends and the
// attach helpers.
//
// It reaches the layer store only through blockdev: it must not import
// snapshot directly. It must not import backupd (backupd drives agents
// through this package's API, so the reverse import would be a cycle) nor
// plugins (targets belong to backupd).
//
// Not implemented yet: see issue 5.
package agent
