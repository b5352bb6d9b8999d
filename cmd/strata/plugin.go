package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
	"github.com/strata-block/strata/plugins/s3"
)

// builtinTargets are the targets this binary serves as plugins.
var builtinTargets = map[string]plugins.OpenFunc{
	fs.Kind: fs.Open,
	s3.Kind: s3.Open,
}

// newPluginCmd builds `strata plugin`, whose `serve` runs a built-in
// backup target as a go-plugin plugin. The agent's plugin manager starts it;
// it is not meant to be run by hand.
func newPluginCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plugin",
		Short: "Serve built-in backup-target plugins (started by the agent)",
	}
	var logLevel string
	serve := &cobra.Command{
		Use:   "serve fs|s3",
		Short: "Serve a built-in backup target over the plugin protocol",
		Long: `Serve runs a built-in backup target as a plugin process speaking the
Strata target protocol (gRPC over go-plugin with AutoMTLS). The agent's plugin
manager starts "strata plugin serve fs" or "strata plugin serve s3" and
restarts it if it dies; run by hand it only prints that it is a plugin.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{fs.Kind, s3.Kind},
		RunE: func(_ *cobra.Command, args []string) error {
			open, ok := builtinTargets[args[0]]
			if !ok {
				return fmt.Errorf("plugin serve: no built-in target %q (want fs or s3)", args[0])
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("plugin serve: --log-level: %w", err)
			}
			// The plugin logs JSON lines on standard error, which the
			// host turns back into records of its own logger.
			plugins.Serve(plugins.ServeConfig{Open: open, Logger: plugins.NewPluginLogger(os.Stderr, level)})
			return nil
		},
	}
	serve.Flags().StringVar(&logLevel, "log-level", "info", "lowest level logged: debug, info, warn or error")
	cmd.AddCommand(serve)
	return cmd
}
