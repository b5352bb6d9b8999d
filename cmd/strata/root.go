package main

import (
	"github.com/spf13/cobra"
)

// version is the version this binary reports. Release builds override it:
//
//	go build -ldflags "-X main.version=v0.1.0" ./cmd/strata
var version = "dev"

// newRootCmd builds the strata command tree. ver is the version that the
// version subcommand and --version report.
func newRootCmd(ver string) *cobra.Command {
	root := &cobra.Command{
		Use:   "strata",
		Short: "Copy-on-write block volumes with snapshots and verified backups",
		Long: `Strata turns a directory on a host into block volumes. Each volume is a
chain of copy-on-write layers with O(1) snapshots. A per-host agent serves
volumes over NBD and as files in a FUSE mount; volume backups go
incrementally to backup targets through plugins; and a coordinator takes
system backups whose manifest is committed only after every volume backup
it references is acknowledged durable on its target.

Start the agent with "strata server", then manage volumes with
"strata volume ..." and "strata snapshot ...". Every verb prints a human
summary, or JSON with --json.`,
		Version: ver,
		// main prints the returned error once, on one line; usage on every
		// error would bury it.
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("strata {{.Version}}\n")
	root.AddCommand(newVersionCmd(ver), newServerCmd(ver), newVolumeCmd(), newSnapshotCmd(), newTargetCmd(), newBackupCmd(), newSystemCmd(), newAgentCmd(), newPluginCmd())
	return root
}
