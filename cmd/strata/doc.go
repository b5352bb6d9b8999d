// Command strata is Strata's one binary: `strata server` (the agent, the
// backup service and the coordinator on one host), the CLI verbs that talk
// to it over its control socket, and `strata plugin serve <name>` for the
// built-in backup targets.
//
// This package only parses the command line and wires packages together; it
// holds no storage, frontend, backup or target logic of its own. main.go
// stays thin: main calls run, which executes the command tree and turns its
// error into one line on stderr (and a {"error", "code"} line on stdout with
// --json) and the exit status the root command's help documents (errors.go:
// 1 failure, 2 usage, 128+signal when interrupted).
package main
