package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
)

// errServerNotImplemented is returned by `strata server` until issue 5 lands.
var errServerNotImplemented = errors.New("strata server: not implemented yet (issue 5)")

func newServerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "server",
		Short: "Run the agent and coordinator on this host (not implemented yet)",
		Long: `Run the agent and the coordinator on this host.

Not implemented yet: the server arrives with issue 5. This command serves
nothing and exits with an error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Best effort: the returned error carries the same fact.
			_, _ = fmt.Fprintln(cmd.ErrOrStderr(),
				"The Strata server (agent and coordinator) arrives with issue 5; nothing is served yet.")
			return errServerNotImplemented
		},
	}
}
