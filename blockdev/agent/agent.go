package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/nbd"
)

// Agent is the per-host daemon: it owns the volume Manager of a data
// directory and serves its volumes over NBD and FUSE, with a control API
// and metrics. Create it with New, then Run it.
type Agent struct {
	cfg     Config
	version string
	log     *slog.Logger
	started time.Time

	mgr *blockdev.Manager
	met *metrics
	nbd *nbd.Server
	// nbdTCP serves the NBD TCP listener (nil without one): the same
	// exports, TLS and client certificates required.
	nbdTCP *nbd.Server
	state  *stateFile
	host   *host // FUSE mount and host attachments

	exts []Extension

	holds holds // open write holds (consistency groups)

	ready chan struct{} // closed once Run serves the control API

	// targetCheck reports whether a backup target exists (SetTargetCheck).
	targetCheck func(ctx context.Context, name string) error

	mu sync.Mutex // serialises attach, detach, mount, umount, delete, revert, settings

	exMu      sync.Mutex
	exclusive map[string]*exHold // volumes taken by Exclusive (a restore into them)
}

// Extension adds routes to the control API: the server binary uses it to
// serve what other packages own (backup targets, backups) beside the
// agent's own routes, with the same error format, without the agent
// importing them.
type Extension interface {
	Routes(mux *http.ServeMux, writeErr func(http.ResponseWriter, error), writeJSON func(http.ResponseWriter, int, any))
	// Close runs when the agent stops.
	Close() error
}

// Starter is an Extension with work to do at start, before the agent
// serves anything (NBD, FUSE, the API): the backup service takes the
// volumes of interrupted restores out of use (Exclusive) there, before a
// client could open one.
type Starter interface {
	Start(ctx context.Context)
}

// Stopper is an Extension that wants to know when shutdown begins, before
// the API servers drain their requests: Stopping should make long
// requests (streams of a backup or a restore) end soon, so the drain does
// not wait out the shutdown timeout and no handler outlives the volumes.
type Stopper interface {
	Stopping()
}

// New opens the data directory: the volume store (every volume in it is
// opened), the agent's state and its metrics. Nothing is served until Run.
func New(ctx context.Context, cfg Config, version string, log *slog.Logger, exts ...Extension) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mgr, err := blockdev.OpenManager(ctx, filepath.Join(cfg.DataDir, storeDir), &blockdev.ManagerOptions{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("open volume store in %s: %w", cfg.DataDir, err)
	}
	a := &Agent{cfg: cfg, version: version, log: log, started: time.Now().UTC(), mgr: mgr, exts: exts, ready: make(chan struct{})}
	a.met = newMetrics(func() float64 { return float64(mgr.Served()) })
	if a.state, err = openState(filepath.Join(cfg.DataDir, stateName)); err != nil {
		_ = mgr.Close()
		return nil, err
	}
	if err := a.state.keepSettings(func(name string) bool {
		_, err := mgr.Volume(ctx, name)
		return !errors.Is(err, blockdev.ErrNotFound)
	}); err != nil {
		log.Warn("forgetting the settings of deleted volumes", "err", err)
	}
	a.nbd, err = nbd.NewServer(exportsAdapter{a}, nbd.Options{Logger: log.With("component", "nbd")})
	if err != nil {
		_ = mgr.Close()
		return nil, err
	}
	return a, nil
}

// Extend adds an API extension; call it before Run. Extensions that need
// the volumes (backups) take them from Manager.
func (a *Agent) Extend(x Extension) { a.exts = append(a.exts, x) }

// SetTargetCheck installs the check that a backup target named by a
// volume's settings exists: check returns nil if it does, else an error
// matching blockdev.ErrNotFound that names it. The agent knows nothing of
// targets (they belong to backupd); the server binary wires its target
// registry here. Call it before Run. Without a check, any valid name is
// accepted.
func (a *Agent) SetTargetCheck(check func(ctx context.Context, name string) error) {
	a.targetCheck = check
}

// VolumeTarget returns the backup target of volume name: "" for the
// default target (also for a volume that does not exist).
func (a *Agent) VolumeTarget(name string) string { return a.state.settings(name).Target }

// Start runs the agent (Run) in a goroutine and returns once it serves the
// control API, or Run's error if it ended before. stop cancels it and
// returns Run's result; it may be called more than once. ctx bounds the
// run as it bounds Run.
func (a *Agent) Start(ctx context.Context) (stop func() error, err error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.ready:
		return sync.OnceValue(func() error {
			cancel()
			return <-done
		}), nil
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("agent stopped before serving")
		}
		return nil, err
	}
}

// Ready is closed once Run serves the control API (on every listener),
// for callers that run an agent in their process.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Manager returns the agent's volume manager, for API extensions.
func (a *Agent) Manager() *blockdev.Manager { return a.mgr }

// Attached reports the host device volume (or "vol@snap") is attached as,
// if any: extensions refuse to overwrite an attached volume.
func (a *Agent) Attached(name string) (Attachment, bool) { return a.state.get(name) }

// Run serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, drains NBD requests in flight, unmounts and detaches what it
// attached (remembering it for the next start), flushes and closes every
// volume.
func (a *Agent) Run(ctx context.Context) (err error) {
	defer func() {
		// Last registered, first closed: an extension may use those
		// registered before it (the backup service the targets service's
		// plugins, which must outlive its jobs' last calls).
		for _, x := range slices.Backward(a.exts) {
			if cerr := x.Close(); cerr != nil {
				a.log.Warn("close api extension", "err", cerr)
			}
		}
		if cerr := a.mgr.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close volumes: %w", cerr)
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	serve := func(name string, fn func() error) {
		wg.Go(func() {
			if err := fn(); err != nil && !errors.Is(err, nbd.ErrServerClosed) && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	// Not ctx's child: the NBD server must outlive the shutdown's unmounts
	// (a kernel NBD device's filesystem writes back through it), so it is
	// stopped explicitly below, after them.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()

	for _, x := range a.exts {
		if st, ok := x.(Starter); ok {
			st.Start(ctx)
		}
	}

	// NBD.
	nl, err := nbd.ListenUnix(NBDSocket(a.cfg.DataDir))
	if err != nil {
		return err
	}
	if err := os.Chmod(NBDSocket(a.cfg.DataDir), 0o600); err != nil {
		_ = nl.Close()
		return fmt.Errorf("nbd socket: %w", err)
	}
	serve("nbd", func() error { return a.nbd.Serve(runCtx, nl) })
	if a.cfg.NBDListen != "" {
		tl, err := a.listenNBDTCP()
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		serve("nbd tcp", func() error { return a.nbdTCP.Serve(runCtx, tl) })
	}

	// FUSE and the attachments of the previous run.
	a.host = newHost(a)
	if err := a.host.start(runCtx); err != nil {
		cancel()
		wg.Wait()
		return err
	}
	a.restoreAttachments(runCtx)

	// Control API.
	mux := http.NewServeMux()
	a.routes(mux)
	for _, x := range a.exts {
		x.Routes(mux, writeError, writeJSON)
	}
	usrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	servers := []*http.Server{usrv}
	ul, err := listenUnixAPI(APISocket(a.cfg.DataDir))
	if err != nil {
		cancel()
		wg.Wait()
		a.host.stop(context.Background(), true) // a failed start forgets nothing
		return err
	}
	serve("api", func() error { return usrv.Serve(ul) })
	if a.cfg.APIListen != "" {
		srv, tl, err := a.tcpAPI(mux)
		if err != nil {
			cancel()
			_ = usrv.Close()
			wg.Wait()
			a.host.stop(context.Background(), true) // a failed start forgets nothing
			return err
		}
		servers = append(servers, srv)
		serve("api tcp", func() error { return srv.Serve(tl) })
	}
	close(a.ready)
	a.log.Info("agent serving", "data_dir", a.cfg.DataDir, "api", APISocket(a.cfg.DataDir), "nbd", NBDSocket(a.cfg.DataDir), "fuse", a.host.mountPoint())

	select {
	case <-ctx.Done():
	case err = <-errc:
		a.log.Error("agent: a listener failed; shutting down", "err", err)
	}
	// Each step gets ShutdownTimeout of its own: a slow drain of the API
	// must not leave the unmounts no time at all.
	step := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout.Duration)
	}
	a.log.Info("agent shutting down")
	for _, x := range a.exts {
		if s, ok := x.(Stopper); ok {
			s.Stopping()
		}
	}
	a.releaseAllHolds()
	sctx, scancel := step()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	scancel()
	// Unmount and detach before the NBD server stops: a filesystem on a
	// kernel NBD device writes its dirty pages back through it.
	hctx, hcancel := step()
	a.host.stop(hctx, true)
	hcancel()
	nctx, ncancel := step()
	if serr := a.nbd.Shutdown(nctx); serr != nil {
		a.log.Warn("nbd shutdown", "err", serr)
	}
	if a.nbdTCP != nil {
		if serr := a.nbdTCP.Shutdown(nctx); serr != nil {
			a.log.Warn("nbd tcp shutdown", "err", serr)
		}
	}
	ncancel()
	cancel()
	wg.Wait()
	return err
}

// listenUnixAPI listens on the control socket with mode 0600, replacing a
// stale socket file but never a live server's.
func listenUnixAPI(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("control socket %s: another strata server is running on this data directory", path)
		}
		_ = os.Remove(path)
	}
	old := umask(0o177)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}

// listenNBDTCP makes the NBD server of the TCP listener (the unix
// socket's exports, but FORCEDTLS: clients must start TLS and present a
// certificate the configured CA signed) and listens.
func (a *Agent) listenNBDTCP() (net.Listener, error) {
	cert, err := tls.LoadX509KeyPair(a.cfg.TLSCert, a.cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("nbd tls: %w", err)
	}
	pem, err := os.ReadFile(a.cfg.NBDClientCA)
	if err != nil {
		return nil, fmt.Errorf("nbd client ca: %w", err)
	}
	cas := x509.NewCertPool()
	if !cas.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("nbd client ca %s: no PEM certificate in it", a.cfg.NBDClientCA)
	}
	a.nbdTCP, err = nbd.NewServer(exportsAdapter{a}, nbd.Options{
		Logger:     a.log.With("component", "nbd", "listener", "tcp"),
		RequireTLS: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: cas,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		return nil, err
	}
	return nbd.ListenTCP(a.cfg.NBDListen)
}

func (a *Agent) tcpAPI(mux http.Handler) (*http.Server, net.Listener, error) {
	cert, err := tls.LoadX509KeyPair(a.cfg.TLSCert, a.cfg.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("api tls: %w", err)
	}
	tok, err := os.ReadFile(a.cfg.TokenFile)
	if err != nil {
		return nil, nil, fmt.Errorf("api token: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	if len(token) < 16 {
		return nil, nil, fmt.Errorf("api token in %s: shorter than 16 characters", a.cfg.TokenFile)
	}
	l, err := tls.Listen("tcp", a.cfg.APIListen, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, nil, fmt.Errorf("api listen %s: %w", a.cfg.APIListen, err)
	}
	return &http.Server{Handler: requireToken(token, mux), ReadHeaderTimeout: 10 * time.Second}, l, nil
}

// exportsAdapter serves the Manager's devices to the NBD server, counted
// by the agent's metrics.
type exportsAdapter struct{ a *Agent }

func (e exportsAdapter) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	names, err := e.a.mgr.Exports(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]nbd.ExportInfo, len(names))
	for i, n := range names {
		desc := "strata volume"
		if strings.Contains(n, "@") {
			desc = "strata snapshot (read-only)"
		}
		out[i] = nbd.ExportInfo{Name: n, Description: desc}
	}
	return out, nil
}

func (e exportsAdapter) Open(ctx context.Context, name string) (blockdev.Volume, func(), error) {
	if !strings.Contains(name, "@") {
		if err := e.a.notExclusive(name); err != nil {
			return nil, nil, err
		}
	}
	dev, release, err := e.a.mgr.Open(ctx, name)
	if err != nil {
		if errors.Is(err, blockdev.ErrNotFound) || errors.Is(err, blockdev.ErrInvalidName) {
			err = fmt.Errorf("%w: %w", nbd.ErrUnknownExport, err)
		}
		return nil, nil, err
	}
	if !strings.Contains(name, "@") {
		// Taken while this opened it (Exclusive's InUse may have run
		// just before the open).
		if err := e.a.notExclusive(name); err != nil {
			release()
			return nil, nil, err
		}
	}
	return e.a.met.instrument(dev), release, nil
}

// Status reports the agent's state.
func (a *Agent) status(ctx context.Context) (Status, error) {
	vs, err := a.mgr.Volumes(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{
		Version: a.version, Started: a.started, DataDir: a.cfg.DataDir,
		APISocket: APISocket(a.cfg.DataDir), NBDSocket: NBDSocket(a.cfg.DataDir), NBDListen: a.cfg.NBDListen,
		Volumes: len(vs),
	}
	st.FUSEMount, st.FUSEError = a.host.mountPoint(), a.host.fuseError()
	return st, nil
}

func (a *Agent) decorate(vi blockdev.VolumeInfo) VolumeStatus {
	vs := VolumeStatus{VolumeInfo: vi, NBDURI: fmt.Sprintf("nbd+unix:///%s?socket=%s", vi.Name, NBDSocket(a.cfg.DataDir))}
	if vi.Err == "" {
		vs.FUSEPath = a.host.filePath(vi.Name)
	}
	if at, ok := a.state.get(vi.Name); ok {
		vs.Attachment = &at
	}
	vs.Target = a.state.settings(vi.Name).Target
	return vs
}

func (a *Agent) volumes(ctx context.Context) ([]VolumeStatus, error) {
	vis, err := a.mgr.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]VolumeStatus, len(vis))
	for i, vi := range vis {
		out[i] = a.decorate(vi)
	}
	return out, nil
}

func (a *Agent) volume(ctx context.Context, name string) (VolumeStatus, error) {
	vi, err := a.mgr.Volume(ctx, name)
	if err != nil {
		return VolumeStatus{}, err
	}
	return a.decorate(vi), nil
}

// checkTarget checks that backup target name exists ("" is the default
// target, always acceptable).
func (a *Agent) checkTarget(ctx context.Context, volume, name string) error {
	if name == "" {
		return nil
	}
	if !blockdev.ValidName(name) {
		return fmt.Errorf("volume %q: target name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", volume, name, blockdev.ErrInvalidName)
	}
	if a.targetCheck == nil {
		return nil
	}
	if err := a.targetCheck(ctx, name); err != nil {
		return fmt.Errorf("volume %q: backup target %q: %w", volume, name, err)
	}
	return nil
}

func (a *Agent) createVolume(ctx context.Context, req CreateVolumeRequest) (VolumeStatus, error) {
	if err := a.checkTarget(ctx, req.Name, req.Target); err != nil {
		return VolumeStatus{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	vi, err := a.mgr.Create(ctx, req.Name, req.Size)
	if err != nil {
		return VolumeStatus{}, err
	}
	if err := a.initSettings(ctx, req.Name, volumeSettings{Target: req.Target}); err != nil {
		return VolumeStatus{}, err
	}
	a.volumesChanged()
	return a.decorate(vi), nil
}

func (a *Agent) cloneVolume(ctx context.Context, src string, req CloneRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.mgr.Clone(ctx, src, req.Snapshot, req.Name); err != nil {
		return err
	}
	// A clone starts with the default settings, not its source's.
	if err := a.initSettings(ctx, req.Name, volumeSettings{}); err != nil {
		return err
	}
	a.volumesChanged()
	return nil
}

// initSettings records the settings of volume name, just created; if they
// cannot be saved the volume is removed again, so that no volume exists
// with settings other than those asked for. Callers hold a.mu.
func (a *Agent) initSettings(ctx context.Context, name string, vs volumeSettings) error {
	err := a.state.setSettings(name, vs)
	if err == nil {
		return nil
	}
	if derr := a.mgr.Delete(context.WithoutCancel(ctx), name); derr != nil {
		a.log.Error("remove a volume whose settings could not be saved", "volume", name, "err", derr)
	}
	return fmt.Errorf("volume %q: %w", name, err)
}

func (a *Agent) updateVolume(ctx context.Context, name string, req UpdateVolumeRequest) (VolumeStatus, error) {
	if _, err := a.mgr.Volume(ctx, name); err != nil {
		return VolumeStatus{}, err
	}
	if req.Target != nil {
		if err := a.checkTarget(ctx, name, *req.Target); err != nil {
			return VolumeStatus{}, err
		}
		a.mu.Lock()
		err := func() error {
			defer a.mu.Unlock()
			if _, err := a.mgr.Volume(ctx, name); err != nil {
				return err // deleted meanwhile
			}
			vs := a.state.settings(name)
			vs.Target = *req.Target
			if err := a.state.setSettings(name, vs); err != nil {
				return fmt.Errorf("volume %q: %w", name, err)
			}
			return nil
		}()
		if err != nil {
			return VolumeStatus{}, err
		}
		a.log.Info("volume backup target set", "volume", name, "target", *req.Target)
	}
	return a.volume(ctx, name)
}

func (a *Agent) deleteVolume(ctx context.Context, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.idle(name); err != nil {
		return err
	}
	defer a.volumesChanged() // puts the files back if the deletion failed
	if err := a.mgr.Delete(ctx, name); err != nil {
		return err
	}
	// A hold on it ends with it: a volume created again under the name
	// is not the one a restore took.
	a.dropExclusive(name, nil)
	// The volume is gone: a setting that outlives it is only logged (the
	// next start or a volume created with this name replaces it).
	if err := a.state.setSettings(name, volumeSettings{}); err != nil {
		a.log.Warn("forget the settings of a deleted volume", "volume", name, "err", err)
	}
	return nil
}

func (a *Agent) revert(ctx context.Context, name, snap string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	vi, err := a.mgr.Volume(ctx, name)
	if err != nil {
		return err
	}
	if _, ok := vi.Snapshot(snap); !ok {
		return fmt.Errorf("volume %q: snapshot %q: %w", name, snap, blockdev.ErrNotFound)
	}
	if err := a.idle(name); err != nil {
		return err
	}
	defer a.volumesChanged()
	return a.mgr.Revert(ctx, name, snap)
}

// exHold is one Exclusive hold on a volume, told from another by its
// address. (It must not be of size zero: Go may give distinct zero-size
// values one address.)
type exHold struct{ volume string }

// Exclusive takes volume name for a restore into it: it refuses with
// ErrInUse while the volume is attached, open through its FUSE file or
// open by an NBD client, or already taken; until release is called or the
// volume is deleted, the volume's file stays out of the FUSE mount and
// attach, mount, snapshots, holds and NBD opens of it are refused
// (ErrInUse), so nobody sees the restore half done or writes into it
// meanwhile. A volume created again under the name is not held.
func (a *Agent) Exclusive(name string) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Taken first, then checked idle: a refresh or an NBD open racing
	// this sees the volume taken (or is seen by InUse).
	h := &exHold{volume: name}
	a.exMu.Lock()
	if a.exclusive[name] != nil {
		a.exMu.Unlock()
		return nil, fmt.Errorf("volume %q is being restored: %w", name, blockdev.ErrInUse)
	}
	if a.exclusive == nil {
		a.exclusive = make(map[string]*exHold)
	}
	a.exclusive[name] = h
	a.exMu.Unlock()
	err = a.idle(name)
	if err == nil {
		err = a.mgr.InUse(name)
	}
	if err != nil {
		a.dropExclusive(name, h)
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { a.dropExclusive(name, h) }) }, nil
}

// dropExclusive ends hold h on volume name (nil: whichever holds it), if
// it still holds it.
func (a *Agent) dropExclusive(name string, h *exHold) {
	a.exMu.Lock()
	cur := a.exclusive[name]
	if cur == nil || (h != nil && cur != h) {
		a.exMu.Unlock()
		return
	}
	delete(a.exclusive, name)
	a.exMu.Unlock()
	a.volumesChanged()
}

// notExclusive refuses a use of export name (a volume, or vol@snap for
// the snapshots' sake: ErrInUse) while its volume is taken by Exclusive.
func (a *Agent) notExclusive(name string) error {
	vol := volumeOf(name)
	a.exMu.Lock()
	defer a.exMu.Unlock()
	if a.exclusive[vol] != nil {
		return fmt.Errorf("volume %q is being restored: %w", vol, blockdev.ErrInUse)
	}
	return nil
}

// deleteSnapshot deletes snapshot snap of volume name unless it is
// attached: its attachment could not be restored after a restart.
func (a *Agent) deleteSnapshot(ctx context.Context, name, snap string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at, ok := a.state.get(name + "@" + snap); ok {
		return fmt.Errorf("snapshot %s@%s is attached as %s; detach it first: %w", name, snap, at.Device, blockdev.ErrInUse)
	}
	defer a.volumesChanged()
	return a.mgr.DeleteSnapshot(ctx, name, snap)
}

// idle checks that volume name (and its snapshots) are attached nowhere
// and takes its files out of the FUSE mount, so the Manager sees no user
// but NBD clients. Callers hold a.mu.
func (a *Agent) idle(name string) error {
	if _, err := a.mgr.Volume(context.Background(), name); err != nil {
		return err
	}
	for export, at := range a.state.all() {
		if volumeOf(export) == name {
			return fmt.Errorf("volume %q: %s is attached as %s; detach it first: %w", name, export, at.Device, blockdev.ErrInUse)
		}
	}
	if a.host == nil {
		return nil // before the FUSE mount (a Starter): no file to take out
	}
	return a.host.release(name)
}

// volumesChanged tells the FUSE mount to refresh its file list, and drops
// the metrics of exports that are gone.
func (a *Agent) volumesChanged() {
	if a.host != nil {
		a.host.refresh()
	}
	at := a.met.mark()
	if names, err := a.mgr.Exports(context.Background()); err == nil {
		a.met.prune(names, at)
	}
}
