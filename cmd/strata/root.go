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
"strata volume ..." and "strata snapshot ...". Every verb that talks to the
server (status, volume, snapshot, target, backup, system, agent) prints a human
summary, or JSON with --json: one JSON document, or, for the long verbs
(backup create, restore and verify, system backup create, system restore),
one JSON event a line. "strata version --json" prints {"version": "..."};
"strata server" and "strata plugin serve" print no result.

A verb that fails prints one line on stderr; with --json it also prints
{"error": "...", "code": "..."} as one line on stdout (code: the server's
API error code, such as not_found, invalid or in_use; "usage" for a wrong
command line; "interrupted"; else "error"). It is the last line: a long
verb echoes its events before it, the server's {"event": "error", ...} one
included, which may carry a partial report.

Exit status: 0 success; 1 the verb failed; 2 the command line is wrong (an
unknown command, the wrong number of arguments, an unknown or malformed
flag, a required flag left out); 130 interrupted by Ctrl-C (SIGINT), 143
by SIGTERM. An interrupted wait for a backup, restore, verify or system
operation ends that operation too: the server ties it to the request.`,
		Version: ver,
		// main prints the returned error once, on one line; usage on every
		// error would bury it.
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("strata {{.Version}}\n")
	root.AddCommand(newVersionCmd(ver), newServerCmd(ver), newStatusCmd(), newVolumeCmd(), newSnapshotCmd(), newTargetCmd(), newBackupCmd(), newSystemCmd(), newAgentCmd(), newPluginCmd())
	// Cobra adds the completion command at Execute; add it now so that
	// the walk below covers it too.
	root.InitDefaultCompletionCmd()
	root.SetFlagErrorFunc(argsError)
	strictArgs(root)
	return root
}

// groupAnnotation marks the commands that only group subcommands (they
// print their help).
const groupAnnotation = "strata-group"

// strictArgs makes every command of the tree under cmd refuse a command
// line it cannot take, with an error naming the command (a usageError,
// exit status 2):
//
//   - a command that only groups subcommands (no Run of its own) fails on
//     an unknown subcommand; cobra would print its help and exit 0. With no
//     argument it prints its help.
//   - argument-count errors, and required flags left out, name the command
//     path and its usage line (SilenceUsage keeps cobra from printing the
//     usage). Flag errors get the same through the root's FlagErrorFunc.
func strictArgs(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		strictArgs(c)
	}
	if cmd.HasSubCommands() && !cmd.Runnable() {
		if cmd.Annotations == nil {
			cmd.Annotations = map[string]string{}
		}
		cmd.Annotations[groupAnnotation] = "true"
		cmd.Args = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommandError(c, args[0])
			}
			return nil
		}
		cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		return
	}
	check := cmd.Args
	if check == nil {
		check = cobra.ArbitraryArgs
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return argsError(c, err)
		}
		// Cobra checks these after the pre-runs, unwrapped: check them
		// here (its own check then passes).
		if err := c.ValidateRequiredFlags(); err != nil {
			return argsError(c, err)
		}
		if err := c.ValidateFlagGroups(); err != nil {
			return argsError(c, err)
		}
		return nil
	}
}
