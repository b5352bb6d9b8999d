// Command testsum reads `go test -json` on stdin and prints what a person
// needs from a whole-suite run: each package's result line, the full
// output of every failed test, and the skipped tests with their reasons.
// It exits non-zero when a test or package failed, when the input ends
// without a result for a package it saw start, or when a test was skipped
// that -allow-skip does not name: make test runs on machines that have
// every tool (scripts/deps.sh installs them), so a skip there is a test
// that silently did not run.
package main
