// Package targets owns the host's backup-target registry: which targets
// exist (name, URL, default, and the path of a credentials file the
// operator keeps), persisted in the data directory, and the control-API
// routes behind `strata target add|ls|rm|test`. It opens targets through
// the plugins manager and never stores, logs or returns a secret: the
// registry records where credentials are, not what they are.
//
// It imports plugins and blockdev (for name rules) only; never snapshot.
package targets
