package nbd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/strata-block/strata/blockdev"
)

// ExportInfo describes one export for NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
type ExportInfo struct {
	// Name is the export name a client asks for: "vol" for a volume's
	// head, "vol@snap" for a read-only snapshot.
	Name string
	// Description is a human-readable line (may be empty).
	Description string
}

// Exports is the registry the server serves: it lists export names and
// opens the device behind one. The agent implements it over its volume
// manager; MapExports is a fixed in-memory implementation.
//
// Contract:
//   - List returns every export a client may open, sorted by name.
//   - Open returns the device for name and a release func the server calls
//     exactly once when the connection using it ends (after its final
//     flush). For an unknown name it returns an error wrapping
//     ErrUnknownExport.
//   - Concurrent Opens of one name return devices over the same data, so
//     that a Flush through any of them makes durable every write completed
//     through all of them. The server advertises NBD_FLAG_CAN_MULTI_CONN
//     on that promise; an Exports that cannot keep it must not be served.
//   - A device that is read-only (snapshots) reports ReadOnly() true; the
//     server then advertises NBD_FLAG_READ_ONLY and answers writes EPERM.
//   - Both methods are safe for concurrent use and honour ctx.
type Exports interface {
	List(ctx context.Context) ([]ExportInfo, error)
	Open(ctx context.Context, name string) (vol blockdev.Volume, release func(), err error)
}

// MapExports is an Exports over a fixed set of devices that the caller
// owns: Open hands out the registered device itself (so every connection
// shares it) and release does nothing. It is safe for concurrent use.
type MapExports struct {
	mu sync.RWMutex
	m  map[string]mapExport
}

type mapExport struct {
	vol  blockdev.Volume
	desc string
}

// NewMapExports returns an empty registry.
func NewMapExports() *MapExports { return &MapExports{m: make(map[string]mapExport)} }

// Add exports vol under vol.Name(). It fails with ErrExportExists if the
// name is taken.
func (e *MapExports) Add(vol blockdev.Volume, description string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := vol.Name()
	if _, ok := e.m[name]; ok {
		return fmt.Errorf("export %q: %w", name, ErrExportExists)
	}
	e.m[name] = mapExport{vol: vol, desc: description}
	return nil
}

// Remove stops exporting name to new connections; connections already
// using it keep it. Removing an unknown name does nothing.
func (e *MapExports) Remove(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.m, name)
}

// List implements Exports.
func (e *MapExports) List(ctx context.Context) ([]ExportInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]ExportInfo, 0, len(e.m))
	for name, x := range e.m {
		out = append(out, ExportInfo{Name: name, Description: x.desc})
	}
	slices.SortFunc(out, func(a, b ExportInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Open implements Exports.
func (e *MapExports) Open(ctx context.Context, name string) (blockdev.Volume, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	x, ok := e.m[name]
	if !ok {
		return nil, nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	return x.vol, func() {}, nil
}
