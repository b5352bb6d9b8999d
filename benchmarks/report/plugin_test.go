package main

import (
	"strings"
	"testing"
)

func TestPluginSamples(t *testing.T) {
	t.Parallel()
	out := `goos: linux
BenchmarkTarget/Put/4096KiB/inprocess-2         	     194	  18378491 ns/op	 228.22 MB/s	   39584 B/op	      40 allocs/op
BenchmarkTarget/Put/4096KiB/plugin-2            	      48	  46597240 ns/op	  90.01 MB/s	   96085 B/op	     146 allocs/op
BenchmarkTarget/Get/4096KiB/plugin              	     184	  13638338 ns/op	 307.54 MB/s	 4430287 B/op	     338 allocs/op
BenchmarkTarget/Get/64KiB/plugin-2              	     184	  13638338 ns/op	 307.54 MB/s
BenchmarkTarget/PutParallel/4096KiB/plugin-2    	      43	  51186155 ns/op	  81.94 MB/s
PASS
`
	got, err := pluginSamples(strings.NewReader(out), "2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"plugin\tput4MiB\tinprocess\t2\tMBps\t228.22\n",
		"plugin\tput4MiB\tplugin\t2\tMBps\t90.01\n",
		"plugin\tget4MiB\tplugin\t2\tMBps\t307.54\n",
	}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("pluginSamples = %q, want %q", got, want)
	}
	if _, err := pluginSamples(strings.NewReader("FAIL\n"), "1"); err == nil {
		t.Error("pluginSamples of output without results succeeded")
	}
}

func TestMarkdownPluginGoal(t *testing.T) {
	t.Parallel()
	smp := samples(t,
		"plugin\tput4MiB\tinprocess\t1\tMBps\t400",
		"plugin\tput4MiB\tplugin\t1\tMBps\t360",
		"plugin\tput4MiB\tinprocess\t2\tMBps\t500",
		"plugin\tput4MiB\tplugin\t2\tMBps\t400",
		"plugin\tget4MiB\tinprocess\t1\tMBps\t5000",
		"plugin\tget4MiB\tplugin\t1\tMBps\t500",
	)
	rp := &Report{Samples: smp, Meta: &Meta{kv: map[string]string{}}}
	var b strings.Builder
	if err := rp.Markdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| Put 4 MiB | 450 (400–500) | 380 (360–400) |",
		"| Put 4 MiB | 0.84× (0.80–0.90) |",
		"| Get 4 MiB | 0.10× |",
		"Goal (issue 6): plugin / in-process ≥ 0.80×. Met for Put 4 MiB (0.84×). **Not met** for Get 4 MiB (0.10×).",
		"- Backup-target plugin overhead: Put 4 MiB: plugin / in-process 0.84× (0.80–0.90); Get 4 MiB: plugin / in-process 0.10×.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}
