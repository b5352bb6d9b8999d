package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-block/strata/backupd/coordinator"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Agents the coordinator drives in system backups",
		Long: `The coordinator in "strata server" backs up the volumes of its own agent
("local") and of every agent added here: other "strata server" processes,
usually started with --coordinator=false, reached over their control API (a
unix socket path, or https://HOST:PORT with --token-file and --ca-file).`,
	}
	addClientFlags(cmd)
	cmd.AddCommand(agentAddCmd(), agentLsCmd(), agentRmCmd())
	return cmd
}

func agentAddCmd() *cobra.Command {
	var req coordinator.AddAgentRequest
	cmd := &cobra.Command{
		Use:   "add NAME ADDR",
		Short: "Register an agent (ADDR: its control socket path, unix:///path, or https://host:port)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name, req.Addr = args[0], args[1]
			if !strings.Contains(req.Addr, "://") {
				// A socket path is the server's to open: make it absolute.
				abs, err := absPath(req.Addr)
				if err != nil {
					return err
				}
				req.Addr = abs
			}
			for _, p := range []*string{&req.TokenFile, &req.CAFile} {
				if *p != "" {
					abs, err := absPath(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			var a coordinator.AgentRecord
			if err := coordinatorDo(cmd, http.MethodPost, "/v1/agents", req, &a); err != nil {
				return err
			}
			return output(cmd, a, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "agent %s added (%s)\n", a.Name, a.Addr)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&req.TokenFile, "token-file", "", "bearer token file for an https agent")
	cmd.Flags().StringVar(&req.CAFile, "ca-file", "", "CA certificate (PEM) of an https agent")
	return cmd
}

func agentLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List the agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var as []coordinator.AgentRecord
			if err := coordinatorDo(cmd, http.MethodGet, "/v1/agents", nil, &as); err != nil {
				return err
			}
			return output(cmd, as, func(w io.Writer) error {
				rows := make([][]string, 0, len(as))
				for _, a := range as {
					added := ""
					if !a.Added.IsZero() {
						added = a.Added.Local().Format(time.DateTime)
					}
					rows = append(rows, []string{a.Name, a.Addr, added})
				}
				return table(w, []string{"NAME", "ADDR", "ADDED"}, rows)
			})
		},
	}
}

func agentRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Unregister an agent",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := coordinatorDo(cmd, http.MethodDelete, "/v1/agents/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			return done(cmd, "agent "+args[0]+" removed", map[string]any{"agent": args[0]})
		},
	}
}
