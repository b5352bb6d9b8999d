package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []float64
		want Stat
	}{
		{name: "empty", in: nil, want: Stat{}},
		{name: "one", in: []float64{3}, want: Stat{N: 1, Min: 3, Median: 3, Max: 3}},
		{name: "odd", in: []float64{5, 1, 3}, want: Stat{N: 3, Min: 1, Median: 3, Max: 5}},
		{name: "even", in: []float64{4, 1, 2, 10}, want: Stat{N: 4, Min: 1, Median: 3, Max: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestReadSamplesRejectsMalformedLines(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"nbd\tjob\tstrata\t1\tiops\n",           // 5 fields
		"nbd\tjob\tstrata\tx\tiops\t1\n",        // round
		"nbd\tjob\tstrata\t1\tiops\tNaN\n",      // value
		"nbd\tjob\tstrata\t1\tiops\t12abc\n",    // value
		"nbd\tjob\tstrata\t1\tiops\t1\textra\n", // 7 fields
	} {
		if _, err := ReadSamples(strings.NewReader(in)); err == nil {
			t.Errorf("ReadSamples(%q) succeeded", in)
		}
	}
}

func samples(t *testing.T, lines ...string) *Samples {
	t.Helper()
	s, err := ReadSamples(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRatioOrientationAndRounds(t *testing.T) {
	t.Parallel()
	smp := samples(t,
		"# comment",
		"backup\tfull\tstrata\t1\ts\t2",
		"backup\tfull\trestic\t1\ts\t6",
		"backup\tfull\tstrata\t2\ts\t4",
		"backup\tfull\trestic\t2\ts\t4",
		"backup\tfull\tstrata\t3\ts\t3", // restic missing in round 3: no per-round ratio
	)
	sec := sectionByKey(t, "backup")
	c := comparison{Metric: "s", Num: "strata", Den: "restic", Peer: true}
	r := sec.ratio(smp, c, "full")
	// Lower is better: advantage = restic median / Strata median = 5 / 3.
	if !r.OK || !near(r.Value, 5.0/3) {
		t.Fatalf("ratio = %+v, want 1.667", r)
	}
	if r.PerRound.N != 2 || !near(r.PerRound.Min, 1) || !near(r.PerRound.Max, 3) {
		t.Errorf("per-round ratios = %+v, want 2 rounds from 1 to 3", r.PerRound)
	}
	c.Plain = true
	if r := sec.ratio(smp, c, "full"); !near(r.Value, 3.0/5) {
		t.Errorf("plain ratio = %v, want 0.6", r.Value)
	}
	if r := sec.ratio(smp, c, "restore"); r.OK {
		t.Errorf("ratio of an unmeasured figure = %+v, want none", r)
	}
}

func TestSystemFromAnotherSection(t *testing.T) {
	t.Parallel()
	smp := samples(t,
		"fuse\tread1m\tstrata\t1\tiops\t300",
		"nbd\tread1m\traw\t1\tiops\t600",
	)
	sec := sectionByKey(t, "fuse")
	r := sec.ratio(smp, comparison{Metric: "iops", Num: "strata", Den: "raw"}, "read1m")
	if !r.OK || !near(r.Value, 0.5) {
		t.Errorf("Strata / raw = %+v, want 0.5 from the nbd section's raw figure", r)
	}
}

func TestMarkdownNamesBottleneckWhereBehind(t *testing.T) {
	t.Parallel()
	smp := samples(t,
		"nbd\twrite1m\tstrata-d0\t1\tiops\t100",
		"nbd\twrite1m\tnbdkit\t1\tiops\t200",
		"nbd\trandread4k\tstrata-d0\t1\tiops\t300",
		"nbd\trandread4k\tnbdkit\t1\tiops\t200",
		"nbd\tread1m\tstrata-d0\t1\tiops\t50",
		"nbd\tread1m\tnbdkit\t1\tiops\t100",
	)
	rp := &Report{
		Samples:     smp,
		Meta:        &Meta{kv: map[string]string{"command": "benchmarks/run.sh --quick"}},
		Bottlenecks: map[string]string{"nbd/write1m": "pwrite fills holes"},
	}
	var b strings.Builder
	if err := rp.Markdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"`benchmarks/run.sh --quick`",
		"| fio over NBD | Strata d0 / nbdkit | write 1M QD8 | 0.50× | **behind** |",
		"| fio over NBD | Strata d0 / nbdkit | randread 4k QD32 | 1.50× | ahead |",
		"> pwrite fills holes",
		"No profiled bottleneck is recorded for `nbd/read1m`",
		"Not measured in this run.", // the other sections
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}

func TestReadBottlenecks(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "b.md")
	text := "# title\npreamble\n## nbd/write1m fuse/write1m\nholes\nmore\n## backup/full\nsha\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	notes, err := ReadBottlenecks(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"nbd/write1m": "holes\nmore", "fuse/write1m": "holes\nmore", "backup/full": "sha"}
	if len(notes) != len(want) {
		t.Errorf("notes = %q, want %q", notes, want)
	}
	for k, v := range want {
		if notes[k] != v {
			t.Errorf("note %s = %q, want %q", k, notes[k], v)
		}
	}
}

func TestFioFigures(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "fio.json")
	js := `note: a warning fio prints first
{"jobs":[{"jobname":"j","error":0,
 "read":{"io_bytes":4096,"iops":1000,"bw_bytes":1048576,"clat_ns":{"percentile":{"99.000000":5000}}},
 "write":{"io_bytes":8192,"iops":500,"bw_bytes":2097152,"clat_ns":{"percentile":{"99.000000":9000}}}}]}`
	if err := os.WriteFile(p, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	iops, mibps, p99, err := FioFigures(p)
	if err != nil {
		t.Fatal(err)
	}
	if iops != 1500 || mibps != 3 || p99 != 9 {
		t.Errorf("FioFigures = %v IOPS, %v MiB/s, p99 %v µs; want 1500, 3, 9 (p99 of the writes)", iops, mibps, p99)
	}
}

func TestChartWritesPNG(t *testing.T) {
	t.Parallel()
	smp := samples(t,
		"nbd\twrite1m\tstrata-d0\t1\tiops\t100",
		"nbd\twrite1m\tnbdkit\t1\tiops\t200",
		"nbd\twrite1m\tstrata-d0\t2\tiops\t120",
		"nbd\twrite1m\tnbdkit\t2\tiops\t150",
	)
	p := filepath.Join(t.TempDir(), "nbd.png")
	if err := Chart(smp, sectionByKey(t, "nbd"), p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "\x89PNG") {
		t.Errorf("%s is not a PNG", p)
	}
}

func sectionByKey(t *testing.T, k string) *section {
	t.Helper()
	for i := range sections {
		if sections[i].Key == k {
			return &sections[i]
		}
	}
	t.Fatalf("no section %q", k)
	return nil
}

func near(a, b float64) bool { d := a - b; return d < 1e-9 && d > -1e-9 }

// benchbackup's JSON becomes samples: seconds per tool, the plain write's
// seconds where the step carries one, and stored bytes for backup steps
// only.
func TestBackupCmdSamples(t *testing.T) {
	in := filepath.Join(t.TempDir(), "round.json")
	js := `{"round":0,"size":1073741824,"steps":[
{"step":"full","strata_s":2,"restic_s":6,"strata_bytes":1048576,"restic_bytes":2097152,"changed_bytes":1048576,"disk_s":3.5},
{"step":"incremental-10MiB-contiguous","strata_s":0.1,"restic_s":3,"strata_bytes":1,"restic_bytes":2,"changed_bytes":1},
{"step":"restore","strata_s":2.5,"restic_s":3,"changed_bytes":1073741824,"disk_s":3.5}]}`
	if err := os.WriteFile(in, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := backupCmd(&out, []string{in, "2"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"backup\tfull\tstrata\t2\ts\t2.000",
		"backup\tfull\trestic\t2\ts\t6.000",
		"backup\tfull\tdisk\t2\ts\t3.500",
		"backup\tfull\tstrata\t2\tstored_MiB\t1.000",
		"backup\tfull\trestic\t2\tstored_MiB\t2.000",
		"backup\tfull\tchanged\t2\tstored_MiB\t1.000",
		"backup\tinc-10MiB\tstrata\t2\ts\t0.100",
		"backup\tinc-10MiB\trestic\t2\ts\t3.000",
		"backup\tinc-10MiB\tstrata\t2\tstored_MiB\t0.000",
		"backup\tinc-10MiB\trestic\t2\tstored_MiB\t0.000",
		"backup\tinc-10MiB\tchanged\t2\tstored_MiB\t0.000",
		"backup\trestore\tstrata\t2\ts\t2.500",
		"backup\trestore\trestic\t2\ts\t3.000",
		"backup\trestore\tdisk\t2\ts\t3.500",
	}
	if got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); !slices.Equal(got, want) {
		t.Errorf("samples:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := os.WriteFile(in, []byte(`{"steps":[{"step":"fulll","strata_s":1}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := backupCmd(&out, []string{in, "1"}); err == nil || !strings.Contains(err.Error(), `unknown step "fulll"`) {
		t.Errorf("unknown step: err %v", err)
	}
}
