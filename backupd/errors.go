package backupd

import "errors"

// Errors the engine returns, wrapped with what they concern (volume,
// backup, chunk, pack, page). Check them with errors.Is. Target errors keep
// their plugins class (plugins.ErrNotFound and so on) in the chain.
var (
	// ErrCorrupt is returned when stored data fails a check: a chunk
	// record whose header, xxhash, id or authentication tag is wrong, a
	// pack index, map page or manifest that does not decode or validate.
	ErrCorrupt = errors.New("corrupt backup data")
	// ErrMissing is returned when an object a backup references (a chunk,
	// a pack, a map page) is not on the target.
	ErrMissing = errors.New("backup data missing")
	// ErrInvalid is returned for bad arguments: an invalid name, size,
	// option or key.
	ErrInvalid = errors.New("invalid argument")
	// ErrKey is returned when a backup needs the repository key and none
	// or another one was given.
	ErrKey = errors.New("wrong or missing repository key")
	// ErrTooSlow is returned by Backup when more than
	// BackupOptions.MaxDuration passed between loading the chunk index and
	// writing the manifest: GC's grace period assumes no run is longer, so
	// the backup is abandoned rather than risk referencing a swept pack.
	ErrTooSlow = errors.New("backup ran longer than its maximum duration")
	// ErrMismatch is returned when the manifest read back after writing
	// differs from the one written, or a restored volume's digest differs
	// from the manifest's.
	ErrMismatch = errors.New("mismatch")
	// ErrHeld is returned by Delete for a backup a system backup holds
	// (its manifest carries TagSystem): only the coordinator removes it,
	// with DeleteHeld, when no system manifest names it any more.
	ErrHeld = errors.New("held by a system backup")
	// ErrBusy is returned by GC when another GC runs on the repository:
	// it holds the repository's GC lease.
	ErrBusy = errors.New("another GC holds the repository's GC lease")
	// ErrLeaseLost is returned by GC when it stopped because its own lease
	// may no longer be exclusive (renewals failed or stalled, or another
	// GC took it as abandoned).
	ErrLeaseLost = errors.New("GC lease lost")
)

// Tags the coordinator records in the volume backups of a system backup.
// A backup carrying TagSystem is held: Prune keeps it and Delete refuses
// it, because a system manifest may name it.
const (
	TagSystem = "strata.system"
	TagToken  = "strata.token"
)
