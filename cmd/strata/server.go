package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/coordinator"
	"github.com/strata-block/strata/backupd/service"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/blockdev/agent"
)

func newServerCmd(ver string) *cobra.Command {
	var (
		cfg        agent.Config
		configPath string
		logJSON    bool
		pluginDir  string
		backupKey  string
		runCoord   bool
		bootstrap  string
		// backupMaxDur bounds every volume backup and GC's grace.
		backupMaxDur time.Duration
		// gcMargin is how much longer than backupMaxDur a GC grace must be.
		gcMargin time.Duration
		// allowPlain lets a server with --backup-key read unencrypted backups.
		allowPlain bool
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the agent on this host",
		Long: `Run the Strata agent: it opens the volume store in the data directory and
serves every volume over NBD (DIR/nbd.sock) and as a file in a FUSE mount
(DIR/mnt), with the control API on DIR/strata.sock (mode 0600) and
Prometheus metrics at /metrics on it.

The data directory is --data-dir, else $STRATA_DATA_DIR, else ./strata-data.
Settings come from --config (or DIR/strata.toml when it exists), then flags.
SIGTERM or SIGINT drains NBD requests, unmounts and detaches what the agent
attached (and restores it at the next start), flushes and closes volumes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dataDir := dataDirFlag(cmd)
			file, must := configPath, true
			if file == "" {
				file, must = agent.DefaultConfigPath(dataDir), false
			}
			var fileCfg agent.Config
			if err := agent.LoadConfig(file, must, &fileCfg); err != nil {
				return err
			}
			// The file's data_dir counts when nothing else names one (in
			// DIR/strata.toml it can only name DIR itself).
			if fileCfg.DataDir != "" && fileCfg.DataDir != dataDir {
				if !cmd.Flags().Changed("data-dir") && os.Getenv("STRATA_DATA_DIR") == "" {
					dataDir = fileCfg.DataDir
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s sets data_dir %s; using %s (--data-dir or STRATA_DATA_DIR)\n", file, fileCfg.DataDir, dataDir)
				}
			}
			// Flags given on the command line win over the file.
			merged := fileCfg
			merged.DataDir = dataDir
			if cmd.Flags().Changed("nbd-listen") {
				merged.NBDListen = cfg.NBDListen
			}
			if cmd.Flags().Changed("fuse") {
				merged.FUSE = cfg.FUSE
			}
			if cmd.Flags().Changed("log-level") {
				merged.LogLevel = cfg.LogLevel
			}
			log, err := newLogger(merged.LogLevel, logJSON)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return fmt.Errorf("data directory: %w", err)
			}
			var key *backupd.Key
			if backupKey != "" {
				if key, err = backupd.LoadKeyFile(backupKey); err != nil {
					return fmt.Errorf("backup key: %w", err)
				}
			}
			tsvc, err := targets.NewService(dataDir, "", pluginDir, log.With("component", "targets"))
			if err != nil {
				return err
			}
			if err := bootstrapTarget(tsvc.Registry(), bootstrap, dataDir, log); err != nil {
				_ = tsvc.Close()
				return err
			}
			var co *coordinator.Coordinator
			if runCoord {
				co, err = coordinator.New(coordinator.Options{
					DataDir:     dataDir,
					LocalSocket: agent.APISocket(dataDir),
					Targets:     tsvc,
					Logger:      log.With("component", "coordinator"),
					Fault:       os.Getenv(coordinator.FaultEnv),
					// The agents' backups: those of a failed system
					// backup may be committed for that long after.
					BackupMaxDuration: backupMaxDur,
					// System manifests are authenticated (a MAC) under
					// the backup key, as volume backups are.
					Key:                  key,
					AllowUnauthenticated: allowPlain,
				})
				if err != nil {
					_ = tsvc.Close()
					return err
				}
			}
			a, err := agent.New(cmd.Context(), merged, ver, log, tsvc)
			if err != nil {
				if co != nil {
					_ = co.Close()
				}
				_ = tsvc.Close()
				return err
			}
			a.SetTargetCheck(func(_ context.Context, name string) error {
				_, err := tsvc.Registry().Get(name)
				return err
			})
			a.Extend(service.New(service.Config{
				Manager:          a.Manager(),
				Targets:          tsvc,
				VolumeTarget:     a.VolumeTarget,
				Attached:         func(v string) bool { _, ok := a.Attached(v); return ok },
				Exclusive:        a.Exclusive,
				DataDir:          dataDir,
				Key:              key,
				Logger:           log.With("component", "backups"),
				MaxDuration:      backupMaxDur,
				GCMargin:         gcMargin,
				AllowUnencrypted: allowPlain,
			}))
			if co != nil {
				a.Extend(co)
			}
			return a.Run(cmd.Context())
		},
	}
	addDataDirFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "TOML config file (default DIR/strata.toml if it exists)")
	f.StringVar(&cfg.NBDListen, "nbd-listen", "", "also serve NBD on this TCP address, e.g. 127.0.0.1:10809: TLS with client certificates only (needs tls_cert, tls_key and nbd_client_ca in the config file)")
	f.StringVar(&cfg.FUSE, "fuse", "auto", "FUSE mount of volume files: auto (warn and serve NBD only if unusable), on, off")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	f.StringVar(&backupKey, "backup-key", "", "repository key file: encrypts new backups and decrypts encrypted ones")
	f.BoolVar(&runCoord, "coordinator", true, "run the coordinator (system backups); --coordinator=false runs an agent only, driven by another host's coordinator")
	f.StringVar(&bootstrap, "bootstrap-target", "", "when no backup target is registered, register this URL as the default target \"local\"; \"datadir\" is DATA_DIR/backups (make run)")
	f.StringVar(&pluginDir, "plugin-dir", "", "directory of external target plugins (strata-target-<kind> executables)")
	f.DurationVar(&backupMaxDur, "backup-max-duration", backupd.DefaultMaxDuration,
		"a volume backup that runs longer fails (ErrTooSlow); backup gc refuses a --grace not longer than this plus --backup-gc-margin")
	f.BoolVar(&allowPlain, "backup-allow-unencrypted", false,
		"with --backup-key, also restore and verify backups the key does not authenticate: unencrypted ones (taken before the key was set) and encrypted ones whose manifest carries no MAC (written before 2026-11-28); off by default, since anyone able to write to a target could plant or change one")
	f.DurationVar(&gcMargin, "backup-gc-margin", 15*time.Minute,
		"how much longer than --backup-max-duration a backup gc --grace must be: the longest a GC mark's write may take plus the clock difference between the hosts backing up to a target (lower it only for a single host and a fast target)")
	return cmd
}

// bootstrapTarget registers rawURL as the default target "local" when the
// registry is empty; a file:// directory is created. "datadir" stands for
// the directory backups in dataDir (make run's: a working directory whose
// path holds a space, or STRATA_DATA_DIR, need no quoting in the Makefile).
func bootstrapTarget(reg *targets.Registry, rawURL, dataDir string, log *slog.Logger) error {
	if rawURL == "" || len(reg.List()) > 0 {
		return nil
	}
	if rawURL == "datadir" {
		rawURL = "file://" + filepath.Join(dataDir, "backups")
	}
	if dir, ok := strings.CutPrefix(rawURL, "file://"); ok {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("--bootstrap-target %s: %w", rawURL, err)
		}
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return fmt.Errorf("--bootstrap-target %s: %w", rawURL, err)
		}
		rawURL = "file://" + abs
	}
	t, err := reg.Add(targets.Target{Name: "local", URL: rawURL, Default: true})
	if err != nil {
		return fmt.Errorf("--bootstrap-target: %w", err)
	}
	log.Info("registered the bootstrap backup target", "target", t.Name, "url", t.URL)
	return nil
}

func newLogger(level string, asJSON bool) (*slog.Logger, error) {
	var l slog.Level
	if level == "" {
		level = "info"
	}
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	if asJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}
