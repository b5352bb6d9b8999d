package plugins

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
)

// Built-in plugin kinds, served by the strata binary itself as
// `strata plugin serve <kind>`, and the URL schemes that select them.
var builtinSchemes = map[string]string{
	"file": "fs",
	"s3":   "s3",
}

// ExternalPrefix is the file-name prefix of external plugins in the plugin
// directory: the kind "foo" is the executable "strata-target-foo", selected
// by URLs of scheme "foo".
const ExternalPrefix = "strata-target-"

// ManagerConfig configures a Manager. The zero value works: built-ins are
// served by the running executable, there are no external plugins, calls
// are retried by DefaultRetry and logs go to slog.Default().
type ManagerConfig struct {
	// Logger receives the manager's records and every record a plugin
	// logs (its standard error), tagged with the target's name and kind.
	Logger *slog.Logger
	// Executable serves the built-in kinds as `Executable plugin serve
	// <kind>`; empty means os.Executable().
	Executable string
	// PluginDir holds external plugins, strata-target-<kind>; empty means
	// none.
	PluginDir string
	// Retry bounds the retries of idempotent calls.
	Retry RetryPolicy
	// StartTimeout bounds a plugin's start and handshake; 0 means 30s.
	StartTimeout time.Duration
	// DisableDataPlane keeps Put and Get payloads in the gRPC stream (data
	// messages) even for plugins that serve the local data plane
	// (dataplane.go): no socket is passed to the plugins.
	DisableDataPlane bool
}

// RetryPolicy bounds retries: at most Attempts tries in all, waiting
// InitialBackoff after the first failure and doubling up to MaxBackoff
// (with jitter). Zero fields take DefaultRetry's values.
type RetryPolicy struct {
	Attempts       int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// DefaultRetry is the policy a zero RetryPolicy means: 5 tries within
// about 3 seconds of waiting.
var DefaultRetry = RetryPolicy{Attempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultRetry.Attempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultRetry.InitialBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = max(DefaultRetry.MaxBackoff, p.InitialBackoff)
	}
	return p
}

// TargetConfig is what opening a target takes: what `strata target add`
// records (Name, URL) plus the credentials the operator supplies, which
// are never recorded. Its LogValue shows no secret.
type TargetConfig struct {
	// Name is the operator's name for the target, used in logs.
	Name string
	// URL selects the plugin by scheme (file → fs, s3 → s3, any other
	// scheme → the external plugin of that name) and configures it:
	// "file:///srv/backups", "s3://bucket/prefix?endpoint=...". It must
	// not carry credentials (user:password@).
	URL string
	// Credentials are passed to the plugin over the authenticated
	// connection; see LoadCredentialsFile. Empty means the plugin's own
	// environment (which it inherits from the host).
	Credentials Credentials
}

// LogValue logs the name, the URL without any query or user info, and the
// credential names.
func (c TargetConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.String("url", RedactURL(c.URL)), slog.Any("credentials", c.Credentials))
}

// RedactURL is raw without user information or query, for messages and
// logs: a URL a person typed may carry a secret.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

// KindOf returns the plugin kind a target URL selects, rejecting URLs that
// carry credentials or whose scheme cannot name a plugin.
func KindOf(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url's error quotes the URL, which could hold a secret.
		return "", fmt.Errorf("target URL %q does not parse: %w", RedactURL(rawURL), ErrPermanent)
	}
	if u.User != nil {
		return "", fmt.Errorf("target URL %s carries user info: put credentials in a credentials file: %w", RedactURL(rawURL), ErrPermanent)
	}
	if k, ok := builtinSchemes[u.Scheme]; ok {
		return k, nil
	}
	if !validKind(u.Scheme) {
		return "", fmt.Errorf("target URL %s: scheme %q names no plugin (want file, s3 or [a-z][a-z0-9-]*): %w", RedactURL(rawURL), u.Scheme, ErrPermanent)
	}
	return u.Scheme, nil
}

func validKind(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !('a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-') {
			return false
		}
	}
	return true
}

// Manager starts target plugins and keeps them running: each opened target
// has its own plugin process, restarted when it dies. It is safe for
// concurrent use.
type Manager struct {
	cfg    ManagerConfig
	logger *slog.Logger

	mu      sync.Mutex
	remotes map[*Remote]struct{}
	closed  bool

	// staleSockets removes dead hosts' socket directories, once.
	staleSockets sync.Once
}

// NewManager returns a manager; it starts nothing until Open.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	cfg.Retry = cfg.Retry.withDefaults()
	// go-plugin appends the host's own environment after the variables
	// startProcess sets, and the last value wins: a host started with
	// DataPlaneEnv set would hand its plugins a wrong descriptor number
	// (or one where there is none, with the data plane disabled). The
	// host never serves a data plane itself, so the variable goes.
	_ = os.Unsetenv(DataPlaneEnv)
	return &Manager{cfg: cfg, logger: cfg.Logger, remotes: make(map[*Remote]struct{})}
}

// PluginInfo describes an available plugin kind.
type PluginInfo struct {
	Kind    string
	Builtin bool
	Path    string // external plugins only
}

// Plugins lists the built-in kinds and the external plugins found in the
// plugin directory, sorted by kind.
func (m *Manager) Plugins() ([]PluginInfo, error) {
	var out []PluginInfo
	for _, k := range builtinSchemes {
		out = append(out, PluginInfo{Kind: k, Builtin: true})
	}
	if m.cfg.PluginDir != "" {
		ents, err := os.ReadDir(m.cfg.PluginDir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("plugin directory: %w", err)
		}
		for _, e := range ents {
			kind, ok := strings.CutPrefix(e.Name(), ExternalPrefix)
			if !ok || !validKind(kind) || slices.Contains(slices.Collect(mapValues(builtinSchemes)), kind) {
				continue
			}
			if p, err := m.externalPath(kind); err == nil {
				out = append(out, PluginInfo{Kind: kind, Path: p})
			}
		}
	}
	slices.SortFunc(out, func(a, b PluginInfo) int { return strings.Compare(a.Kind, b.Kind) })
	return out, nil
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// externalPath returns the executable for an external kind, checking that
// it is a regular executable file.
func (m *Manager) externalPath(kind string) (string, error) {
	if m.cfg.PluginDir == "" {
		return "", fmt.Errorf("plugin %q: not built in and no plugin directory configured: %w", kind, ErrPermanent)
	}
	p := filepath.Join(m.cfg.PluginDir, ExternalPrefix+kind)
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("plugin %q: %w", kind, Permanent(err))
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("plugin %q: %s is not an executable file: %w", kind, p, ErrPermanent)
	}
	return p, nil
}

// command returns how to run the plugin for kind.
func (m *Manager) command(kind string) (string, []string, error) {
	for _, k := range builtinSchemes {
		if k != kind {
			continue
		}
		exe := m.cfg.Executable
		if exe == "" {
			var err error
			if exe, err = os.Executable(); err != nil {
				return "", nil, fmt.Errorf("built-in plugin %q: finding the strata executable: %w", kind, Permanent(err))
			}
		}
		return exe, []string{"plugin", "serve", kind}, nil
	}
	p, err := m.externalPath(kind)
	return p, nil, err
}

// Open starts the plugin tc.URL selects, configures it with tc and returns
// the target. Starting is retried like any idempotent call; a URL or
// credentials the plugin rejects fail at once. The target stays usable
// until Close (or the manager's Close), its plugin restarted as needed.
func (m *Manager) Open(ctx context.Context, tc TargetConfig) (*Remote, error) {
	kind, err := KindOf(tc.URL)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", tc.Name, err)
	}
	path, args, err := m.command(kind)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", tc.Name, err)
	}
	r := &Remote{
		m:      m,
		cfg:    tc,
		kind:   kind,
		path:   path,
		args:   args,
		policy: m.cfg.Retry,
		logger: m.logger.With("target", tc.Name, "plugin", kind),
		start:  make(chan struct{}, 1),
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("target %q: plugin manager: %w", tc.Name, ErrClosed)
	}
	m.remotes[r] = struct{}{}
	m.mu.Unlock()
	err = r.retry(ctx, "open", func(ctx context.Context, p *process, _ int) error { return nil })
	if err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("target %q: %w", tc.Name, err)
	}
	return r, nil
}

// Close closes every target the manager opened, stopping their plugins.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	remotes := make([]*Remote, 0, len(m.remotes))
	for r := range m.remotes {
		remotes = append(remotes, r)
	}
	m.mu.Unlock()
	var errs []error
	for _, r := range remotes {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

func (m *Manager) forget(r *Remote) {
	m.mu.Lock()
	delete(m.remotes, r)
	m.mu.Unlock()
}

// process is one running plugin and the client shim talking to it.
type process struct {
	// cmd is the plugin's command, for a SIGKILL that cannot reach
	// another process that reused the pid (os.Process knows once it was
	// waited for, and signals through a pidfd).
	cmd    *exec.Cmd
	client *plugin.Client
	target *client
	plane  *hostPlane // nil without a data plane
	pid    int
	// sockDir holds the plugin's gRPC socket; removed once it is gone.
	sockDir string
}

// socketDirPrefix starts the name of a plugin's socket directory, followed
// by the host's pid and a dash.
const socketDirPrefix = "strata-plugin-"

// removeSocketDirsOfDeadHosts removes the plugin socket directories in
// os.TempDir() of hosts that are no longer running (killed before they
// could remove them). A pid reused by another process keeps its
// directories: the safe side.
func removeSocketDirsOfDeadHosts(log *slog.Logger) {
	ents, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), socketDirPrefix)
		pidStr, _, found := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || !found || err != nil || pid <= 0 || pid == os.Getpid() || !e.IsDir() {
			continue
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			continue // alive (or not ours to check)
		}
		if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err == nil {
			log.Debug("removed the plugin socket directory of a host that is gone", "dir", e.Name(), "pid", pid)
		}
	}
}

// kill stops the process and closes its data plane: calls still using
// them fail (transiently) and are retried on the next process.
func (p *process) kill() { p.stop(false) }

// killGrace bounds go-plugin's graceful stop of a plugin (a Shutdown call
// to it), which a process that stopped answering never completes.
const killGrace = 5 * time.Second

// stop ends the plugin process: gracefully (go-plugin's Kill: a Shutdown
// call, then SIGKILL) unless hung, in which case it is SIGKILLed first;
// a graceful stop that takes longer than killGrace is cut short the same
// way.
func (p *process) stop(hung bool) {
	sigkill := func() {
		if p.cmd != nil && p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
		}
	}
	if hung {
		sigkill()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.client.Kill()
	}()
	select {
	case <-done:
	case <-time.After(killGrace):
		sigkill()
		<-done
	}
	if p.plane != nil {
		_ = p.plane.close()
	}
	_ = os.RemoveAll(p.sockDir)
}

// startProcess starts the plugin, completes the handshake and configures
// the target.
func (r *Remote) startProcess(ctx context.Context) (*process, error) {
	// Not exec.CommandContext: the process outlives this call; the
	// go-plugin client owns its lifetime.
	cmd := exec.Command(r.path, r.args...) //nolint:gosec,noctx // the plugin's path comes from the operator's configuration
	// A plugin dies with its host: an orphan would hold the target and
	// whatever the host had open when it was killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The data plane's socket: the plugin inherits its end as descriptor
	// 3 (the first ExtraFiles) and learns the number from the
	// environment; go-plugin appends the host's environment and its own
	// to cmd.Env.
	var plane *hostPlane
	if !r.m.cfg.DisableDataPlane {
		var child *os.File
		var err error
		plane, child, err = newHostPlane()
		if err != nil {
			return nil, err
		}
		// Once the plugin started (or failed to), only it holds child.
		defer child.Close()
		cmd.ExtraFiles = []*os.File{child}
		cmd.Env = []string{fmt.Sprintf("%s=%d", DataPlaneEnv, dataPlaneFD)}
	}
	// go-plugin's server creates its socket in PLUGIN_UNIX_SOCKET_DIR
	// (default os.TempDir()) and removes it only when it stops gracefully,
	// so every plugin that was killed left one in /tmp. Each process gets
	// a directory of its own, removed when the process is gone; a host
	// killed itself leaves them, and the next host removes them.
	r.m.staleSockets.Do(func() { removeSocketDirsOfDeadHosts(r.logger) })
	sockDir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", socketDirPrefix, os.Getpid()))
	if err != nil {
		if plane != nil {
			_ = plane.close()
		}
		return nil, fmt.Errorf("plugin %s: socket directory: %w", r.path, err)
	}
	cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+sockDir)
	hl := newHCLog(r.logger, "")
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     r.m.cfg.StartTimeout,
		Logger:           hl,
		// What the plugin writes to os.Stdout/os.Stderr after serving
		// (not through its logger) still reaches the log.
		SyncStdout:      slog.NewLogLogger(r.logger.With("stream", "stdout").Handler(), slog.LevelInfo).Writer(),
		SyncStderr:      slog.NewLogLogger(r.logger.With("stream", "stderr").Handler(), slog.LevelWarn).Writer(),
		GRPCDialOptions: dialOptions(),
	})
	fail := func(err error) (*process, error) {
		(&process{cmd: cmd, client: c, plane: plane, sockDir: sockDir}).kill()
		return nil, err
	}
	rpc, err := c.Client()
	if err != nil {
		return fail(fmt.Errorf("starting plugin %s: %w", r.path, Transient(err)))
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		return fail(fmt.Errorf("plugin %s: %w", r.path, Permanent(err)))
	}
	tc, ok := raw.(*client)
	if !ok {
		return fail(fmt.Errorf("plugin %s dispensed a %T, not a target: %w", r.path, raw, ErrPermanent))
	}
	if err := tc.configure(ctx, r.cfg.URL, r.cfg.Credentials, plane); err != nil {
		return fail(err)
	}
	if !tc.usesDataPlane() && plane != nil {
		// The plugin does not serve it: payloads take the gRPC stream.
		_ = plane.close()
		plane = nil
	}
	p := &process{cmd: cmd, client: c, target: tc, plane: plane, sockDir: sockDir}
	if rc := c.ReattachConfig(); rc != nil {
		p.pid = rc.Pid
	}
	r.logger.Info("plugin started", "pid", p.pid, "protocol", c.NegotiatedVersion(), "data_plane", plane != nil)
	return p, nil
}
