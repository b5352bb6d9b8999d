// Command strata is Strata's one binary. It will hold `strata server` (the
// agent and the coordinator on one host), the CLI verbs, and
// `strata plugin serve <name>` for the built-in targets.
//
// This package only parses the command line and wires packages together; it
// holds no storage, frontend, backup or target logic of its own. main.go
// stays thin: main calls run and turns its error into one line on stderr and
// exit status 1.
//
// Today it has `strata version` (and cobra's shell completion); `strata
// server` reports that it is not implemented yet (issue 5).
package main
