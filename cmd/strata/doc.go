// Command strata is Strata's one binary: `strata server` (the agent, the
// backup service and the coordinator on one host), the CLI verbs that talk
// to it over its control socket, and `strata plugin serve <name>` for the
// built-in backup targets.
//
// This package only parses the command line and wires packages together; it
// holds no storage, frontend, backup or target logic of its own. main.go
// stays thin: main calls run and turns its error into one line on stderr and
// exit status 1.
package main
