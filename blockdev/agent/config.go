package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the agent's configuration. The zero value plus a DataDir is a
// working configuration: every listener is a unix socket in the data
// directory and FUSE is mounted at DataDir/mnt when the host allows it.
type Config struct {
	// DataDir holds the volume store, the sockets, the FUSE mount point and
	// the agent's state.
	DataDir string `toml:"data_dir"`
	// NBDListen, if set, also serves NBD on this TCP address, which
	// requires TLSCert, TLSKey and NBDClientCA: clients must start TLS
	// (NBD_OPT_STARTTLS) and present a certificate NBDClientCA signed.
	// Any host (any local user, on loopback) reaching the port could
	// otherwise read and write every volume.
	NBDListen string `toml:"nbd_listen"`
	// NBDClientCA is a PEM file of the CAs whose client certificates the
	// NBD TCP listener accepts.
	NBDClientCA string `toml:"nbd_client_ca"`
	// APIListen, if set, also serves the control API on this TCP address,
	// which requires TLSCert, TLSKey and TokenFile.
	APIListen string `toml:"api_listen"`
	TLSCert   string `toml:"tls_cert"`
	TLSKey    string `toml:"tls_key"`
	// TokenFile holds the bearer token TCP API clients must send.
	TokenFile string `toml:"token_file"`
	// FUSE: "auto" (default: mount if possible, warn and serve NBD only if
	// not), "on" (fail if FUSE is unusable) or "off".
	FUSE string `toml:"fuse"`
	// ShutdownTimeout bounds each step of the shutdown on SIGTERM (default
	// 30 s): draining the API, unmounting and detaching, draining NBD.
	ShutdownTimeout duration `toml:"shutdown_timeout"`
	// LogLevel: debug, info (default), warn, error.
	LogLevel string `toml:"log_level"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as UnmarshalText reads it, so that a
// Config encodes back to TOML.
func (d duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Paths inside the data directory.
const (
	storeDir   = "store"
	apiSocket  = "strata.sock"
	nbdSocket  = "nbd.sock"
	mountDir   = "mnt"
	stateName  = "agent-state.json"
	configFile = "strata.toml"
)

// APISocket returns the control socket path of a data directory.
func APISocket(dataDir string) string { return filepath.Join(dataDir, apiSocket) }

// NBDSocket returns the NBD socket path of a data directory.
func NBDSocket(dataDir string) string { return filepath.Join(dataDir, nbdSocket) }

// LoadConfig reads a TOML config file. A missing file at the default
// location (DataDir/strata.toml) is not an error; a named one must exist.
func LoadConfig(path string, mustExist bool, into *Config) error {
	md, err := toml.DecodeFile(path, into)
	if err != nil {
		if !mustExist && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("config %s: unknown setting %q", path, und[0].String())
	}
	return nil
}

// DefaultConfigPath is where LoadConfig looks when no file is named.
func DefaultConfigPath(dataDir string) string { return filepath.Join(dataDir, configFile) }

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("config: data_dir is empty")
	}
	switch c.FUSE {
	case "", "auto", "on", "off":
	default:
		return fmt.Errorf("config: fuse = %q: want auto, on or off", c.FUSE)
	}
	if c.NBDListen != "" && (c.TLSCert == "" || c.TLSKey == "" || c.NBDClientCA == "") {
		return fmt.Errorf("config: nbd_listen %s needs tls_cert, tls_key and nbd_client_ca: NBD over TCP is never served without TLS and client certificates", c.NBDListen)
	}
	if c.APIListen != "" && (c.TLSCert == "" || c.TLSKey == "" || c.TokenFile == "") {
		return fmt.Errorf("config: api_listen %s needs tls_cert, tls_key and token_file: the TCP control API is never served without TLS and a token", c.APIListen)
	}
	switch {
	case c.ShutdownTimeout.Duration < 0:
		return fmt.Errorf("config: shutdown_timeout = %v: want a positive duration", c.ShutdownTimeout.Duration)
	case c.ShutdownTimeout.Duration == 0:
		c.ShutdownTimeout.Duration = 30 * time.Second
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("config: data_dir %q: %w", c.DataDir, err)
	}
	c.DataDir = abs
	return os.MkdirAll(c.DataDir, 0o700)
}
