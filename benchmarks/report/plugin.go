package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// pluginBench matches a result line of the fs target's Go benchmark
// (plugins/fs BenchmarkTarget), e.g.
// "BenchmarkTarget/Put/4096KiB/plugin-2  100  12 ns/op  345.6 MB/s ...".
var pluginBench = regexp.MustCompile(`^BenchmarkTarget/(Put|Get)/4096KiB/(inprocess|plugin)(?:-\d+)?\s.*\s([0-9.]+) MB/s`)

// pluginCmd prints the samples.tsv lines of one round of the plugin stage:
// MB/s of Put and Get of 4 MiB objects, in-process and through the plugin,
// from `go test -bench` output. A series measured more than once in the
// file keeps its last value; a file with no result line is an error.
func pluginCmd(w io.Writer, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: report plugin FILE ROUND")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	lines, err := pluginSamples(f, args[1])
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	_, err = io.WriteString(w, strings.Join(lines, ""))
	return err
}

func pluginSamples(r io.Reader, round string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := pluginBench.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fig := strings.ToLower(m[1]) + "4MiB"
		out = append(out, fmt.Sprintf("plugin\t%s\t%s\t%s\tMBps\t%s\n", fig, m[2], round, m[3]))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no BenchmarkTarget/{Put,Get}/4096KiB result")
	}
	return out, nil
}
