package nbd

import "errors"

var (
	// ErrUnknownExport is returned by Exports.Open for a name that is not
	// exported; the server answers the client with NBD_REP_ERR_UNKNOWN.
	ErrUnknownExport = errors.New("unknown export")
	// ErrExportExists is returned by MapExports.Add for a name already
	// exported.
	ErrExportExists = errors.New("export already exists")
	// ErrServerClosed is returned by Serve once Shutdown has been called
	// or Serve's context is done.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrProtocol is wrapped by the errors describing a client that broke
	// the protocol badly enough that its connection is closed (a wrong
	// magic, an unknown client flag, an oversized payload that cannot be
	// skipped).
	ErrProtocol = errors.New("nbd protocol violation")
)
