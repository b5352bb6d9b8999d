// Command report turns the raw figures of a benchmark run (benchmarks/run.sh
// or one stage script) into benchmarks/RESULTS.md and PNG charts of the
// ratios: medians with min and max over the rounds, ratios of Strata to each
// peer, the machine and the command, and — where Strata is behind a peer —
// the hand-kept note on the profiled bottleneck from BOTTLENECKS.md.
//
//	report -in DIR [-md FILE|-] [-charts DIR] [-bottlenecks FILE]
//	report fio FILE SECTION FIGURE SYSTEM ROUND
//	report backup FILE ROUND
//	report plugin FILE ROUND
//
// DIR holds samples.tsv (section, figure, system, round, metric, value per
// line; see benchmarks/lib.sh), and optionally meta.tsv and stages.tsv
// written by run.sh. The fio form prints the samples.tsv lines of one fio
// JSON output (IOPS, MiB/s, p99 latency); the backup form those of one
// round of backupd/internal/benchbackup; the plugin form those of one round
// of the fs target's Go benchmark (benchmarks/plugin.sh).
//
// It is its own Go module so that the chart library stays out of Strata's
// dependencies.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "fio":
			return fioCmd(stdout, args[1:])
		case "backup":
			return backupCmd(stdout, args[1:])
		case "plugin":
			return pluginCmd(stdout, args[1:])
		}
	}
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	in := fs.String("in", "", "run directory holding samples.tsv")
	md := fs.String("md", "-", "markdown output file, - for stdout")
	charts := fs.String("charts", "", "directory for PNG charts (none if empty)")
	bottlenecks := fs.String("bottlenecks", "benchmarks/BOTTLENECKS.md", "hand-kept bottleneck notes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || fs.NArg() != 0 {
		return errors.New("usage: report -in DIR [-md FILE|-] [-charts DIR] [-bottlenecks FILE]")
	}
	f, err := os.Open(filepath.Join(*in, "samples.tsv"))
	if err != nil {
		return err
	}
	smp, err := ReadSamples(f)
	f.Close()
	if err != nil {
		return err
	}
	meta, err := ReadMeta(*in)
	if err != nil {
		return err
	}
	notes, err := ReadBottlenecks(*bottlenecks)
	if err != nil {
		return fmt.Errorf("bottleneck notes: %w", err)
	}
	rp := &Report{Samples: smp, Meta: meta, Bottlenecks: notes}
	if *charts != "" {
		if err := os.MkdirAll(*charts, 0o755); err != nil {
			return err
		}
		for i := range sections {
			if err := Chart(smp, &sections[i], filepath.Join(*charts, chartName(&sections[i]))); err != nil {
				return fmt.Errorf("chart %s: %w", sections[i].Key, err)
			}
		}
		base := "."
		if *md != "-" {
			base = filepath.Dir(*md)
		}
		rel, err := filepath.Rel(base, *charts)
		if err != nil {
			rel = *charts
		}
		rp.ChartLink = func(name string) string { return filepath.ToSlash(filepath.Join(rel, name)) }
	}
	if *md == "-" {
		return rp.Markdown(stdout)
	}
	tmp := *md + ".tmp"
	w, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := rp.Markdown(w); err != nil {
		w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, *md)
}
