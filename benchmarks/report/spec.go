package main

// What the report shows: for each section of the suite (one stage script
// each), its figures, systems, metrics and the comparisons made of them.
// The stage scripts write samples under exactly these names.

// A metric is one kind of measurement.
type metric struct {
	Key          string
	Label        string
	HigherBetter bool
}

// A system is one column: Strata in some configuration, a peer, or a limit.
// From names another section to take it from (the raw-file limit is measured
// once, by the NBD stage).
type system struct {
	Key, Label, From string
}

// A comparison is a ratio of one system's median to another's on one
// metric, oriented so that above 1 is better for Num (the "advantage"):
// Num/Den for a higher-is-better metric, Den/Num otherwise. Peer marks a
// comparison of Strata with a peer tool: where its advantage is below 1 the
// report says Strata is behind and quotes the known bottleneck.
type comparison struct {
	Label    string
	Metric   string
	Num, Den string // system keys
	Peer     bool
	// Plain: show Num/Den as it is (an amplification, a cost), not as an
	// advantage; it is not charted.
	Plain bool
	// Goal, if set, is the value the ratio should reach (at least); the
	// section says for which figures it is met. GoalSource names who set it.
	Goal       float64
	GoalSource string
}

type section struct {
	Key, Title string
	Stage      string // stage name in stages.tsv
	Intro      string
	Figures    []figure
	Systems    []system
	Metrics    []metric
	Compare    []comparison
}

type figure struct{ Key, Label string }

var fioFigures = []figure{
	{"randread4k", "randread 4k QD32"},
	{"randwrite4k", "randwrite 4k QD32"},
	{"read1m", "read 1M QD8"},
	{"write1m", "write 1M QD8"},
}

var fioMetrics = []metric{
	{"iops", "IOPS", true},
	{"MiBps", "MiB/s", true},
	{"p99us", "p99 completion latency µs", false},
}

var sections = []section{
	{
		Key: "nbd", Title: "fio over NBD", Stage: "nbd",
		Intro: "fio's nbd engine (libnbd, one connection) on a volume of `strata server` at chain depth 0 (base image in the head) " +
			"and depth 3 (three snapshots below the head, scattered overlays), nbdkit's file plugin on a flat raw file, and qemu-nbd on " +
			"a qcow2 chain of the same shape as depth 3; `raw` is fio's io_uring engine on a flat raw file through the page cache, " +
			"the ceiling for any server on this machine. Systems alternate within each round, the first rotating per round. " +
			"Write jobs run after the read jobs on the same images, so later rounds overwrite blocks earlier rounds allocated.",
		Figures: fioFigures,
		Systems: []system{
			{Key: "strata-d0", Label: "Strata depth 0"},
			{Key: "strata-d3", Label: "Strata depth 3"},
			{Key: "nbdkit", Label: "nbdkit file"},
			{Key: "qemu-d3", Label: "qemu-nbd qcow2 depth 3"},
			{Key: "raw", Label: "raw file io_uring (limit)"},
		},
		Metrics: fioMetrics,
		Compare: []comparison{
			{Label: "Strata d0 / nbdkit", Metric: "iops", Num: "strata-d0", Den: "nbdkit", Peer: true},
			{Label: "Strata d3 / nbdkit", Metric: "iops", Num: "strata-d3", Den: "nbdkit", Peer: true},
			{Label: "Strata d3 / qemu-nbd d3", Metric: "iops", Num: "strata-d3", Den: "qemu-d3", Peer: true},
			{Label: "Strata d3 / Strata d0", Metric: "iops", Num: "strata-d3", Den: "strata-d0"},
			{Label: "Strata d0 / raw limit", Metric: "iops", Num: "strata-d0", Den: "raw"},
		},
	},
	{
		Key: "fuse", Title: "fio over FUSE", Stage: "fuse",
		Intro: "fio (io_uring, direct=1) on the FUSE file of a `strata server` volume with snapshots s1, s2, s3 below the head " +
			"(s1 fully written, s2 and s3 each overwriting another quarter, empty head) and on qemu-storage-daemon's FUSE export " +
			"of a qcow2 chain of the same layout (cache=writeback, aio=io_uring). Each job runs on both sides in turn, the first " +
			"alternating per round. The raw-file limit is the NBD stage's (buffered io_uring on a flat file).",
		Figures: fioFigures,
		Systems: []system{
			{Key: "strata", Label: "Strata FUSE depth 3"},
			{Key: "qsd", Label: "qemu-storage-daemon FUSE depth 3"},
			{Key: "raw", Label: "raw file io_uring (limit)", From: "nbd"},
		},
		Metrics: fioMetrics,
		Compare: []comparison{
			{Label: "Strata / qemu-storage-daemon", Metric: "iops", Num: "strata", Den: "qsd", Peer: true},
			{Label: "Strata / raw limit", Metric: "iops", Num: "strata", Den: "raw"},
		},
	},
	{
		Key: "snapshot", Title: "Snapshot create latency under load", Stage: "snapshot",
		Intro: "`POST /v1/volumes/VOL/snapshots` on the control socket of a running `strata server` (curl's request time), " +
			"taken every 50 ms while fio (nbd engine, randrw 4k QD16) runs on the same volume's NBD export: a 1 GiB volume " +
			"fully written, and a 1 TiB sparse volume with data scattered over its whole range. The sizes alternate per round; " +
			"p50/p99/max are per round, then min/median/max over the rounds.",
		Figures: []figure{{"1GiB", "1 GiB"}, {"1TiB", "1 TiB sparse"}},
		Systems: []system{{Key: "strata", Label: "Strata"}},
		Metrics: []metric{
			{"p50ms", "p50 ms", false},
			{"p99ms", "p99 ms", false},
			{"maxms", "max ms", false},
			{"n", "snapshots", true},
			{"load_iops", "fio IOPS meanwhile", true},
		},
	},
	{
		Key: "backup", Title: "Volume backups vs restic", Stage: "backup",
		Intro: "Strata's backup engine (backupd, through the real volume store and an fs target, encrypted) against restic 0.18.1 " +
			"(local repository) on the same random image: full, incremental after a 10 MiB contiguous change, incremental after " +
			"1% of the 4 KiB blocks changed at random, and a restore of the last backup (Strata's into a new volume of the store, with a state file, flushed each 32 MiB window, as the backup service restores to be resumable after a kill; restic's into a file); the tool going first alternates per round. " +
			"Strata's restore returns once the restored data is durable; restic's does not fsync what it wrote, so \"restore, durable\" adds an fsync of restic's restored image to its time (Strata's figure is the same restore). " +
			"Restored images are compared with the source bit for bit. " +
			"\"plain write + fsync\" is how long writing the image's size into a new file in the work directory took in the same round " +
			"(1 MiB writes, then one fsync, as `dd conv=fsync`): what making that much data durable costs on this machine's disk, " +
			"the reference for the full backup (the fs target fsyncs what it stores) and for a durable restore.",
		Figures: []figure{
			{"full", "full"},
			{"inc-10MiB", "incremental, 10 MiB contiguous"},
			{"inc-1pct-4KiB", "incremental, 1% scattered 4 KiB"},
			{"restore", "restore"},
			{"restore-durable", "restore, durable (restic + fsync)"},
		},
		Systems: []system{
			{Key: "strata", Label: "Strata"},
			{Key: "restic", Label: "restic"},
			{Key: "changed", Label: "changed data"},
			{Key: "disk", Label: "plain write + fsync (reference)"},
		},
		Metrics: []metric{
			{"s", "seconds", false},
			{"stored_MiB", "MiB stored by the step", false},
		},
		Compare: []comparison{
			{Label: "time: restic / Strata", Metric: "s", Num: "strata", Den: "restic", Peer: true},
			{Label: "stored: restic / Strata", Metric: "stored_MiB", Num: "strata", Den: "restic", Peer: true},
			{Label: "Strata amplification (stored / changed)", Metric: "stored_MiB", Num: "strata", Den: "changed", Plain: true},
			{Label: "restic amplification (stored / changed)", Metric: "stored_MiB", Num: "restic", Den: "changed", Plain: true},
			{Label: "Strata / plain write + fsync (time)", Metric: "s", Num: "strata", Den: "disk", Plain: true},
		},
	},
	{
		Key: "rss", Title: "Agent memory with 16 × 100 GiB sparse volumes", Stage: "rss",
		Intro: "VmRSS of `strata server` with no volume, then after `strata volume create` of 16 sparse 100 GiB volumes (each " +
			"exported over NBD and in the FUSE mount), then after fio wrote 2048 random 4 KiB blocks into each through NBD (16 jobs " +
			"at once); against qemu-storage-daemon exporting 16 × 100 GiB qcow2 images over NBD, measured the same way. " +
			"RssAnon is the anonymous part (heap, stacks); the rest of VmRSS is mapped files, mostly the program's own binary.",
		Figures: []figure{
			{"empty", "Strata: no volume yet"},
			{"open", "16 volumes open and exported"},
			{"touched", "after fio touched each"},
		},
		Systems: []system{
			{Key: "strata", Label: "Strata agent"},
			{Key: "qsd", Label: "qemu-storage-daemon"},
		},
		Metrics: []metric{{"rss_MiB", "VmRSS MiB", false}, {"anon_MiB", "RssAnon MiB", false}},
		Compare: []comparison{
			{Label: "VmRSS: qemu-storage-daemon / Strata", Metric: "rss_MiB", Num: "strata", Den: "qsd", Peer: true},
		},
	},
	{
		Key: "sysbackup", Title: "System backup of 16 volumes vs the slowest single volume backup", Stage: "sysbackup",
		Intro: "16 volumes with the same amount of random data each, on a fresh `strata server` with an fs target per side: " +
			"`strata system backup create` of all of them, against `strata backup create` of each volume one after another " +
			"(the slowest of those, and their sum). Sides alternate per round.",
		Figures: []figure{{"16vols", "16 volumes"}},
		Systems: []system{
			{Key: "system", Label: "system backup"},
			{Key: "single-slowest", Label: "slowest single volume backup"},
			{Key: "single-sum", Label: "16 single backups in a row"},
		},
		Metrics: []metric{{"s", "seconds", false}},
		Compare: []comparison{
			{Label: "system / slowest single (time)", Metric: "s", Num: "system", Den: "single-slowest", Plain: true},
			{Label: "system / 16 singles in a row (time)", Metric: "s", Num: "system", Den: "single-sum", Plain: true},
		},
	},
	{
		Key: "plugin", Title: "Backup-target plugin overhead", Stage: "plugin",
		Intro: "Put and Get of 4 MiB objects, one at a time, on the fs target (temp file, fsync, rename, fsync of the directory; " +
			"Get from the page cache) called in-process and through its plugin process: go-plugin with AutoMTLS, and for a " +
			"Put or Get one request on the local data plane answered with a descriptor of the object's file, which the host " +
			"reads or writes itself (plugins/doc.go, \"Objects as local files\"); the Go " +
			"benchmark `BenchmarkTarget` of plugins/fs, `go test -bench`. " +
			"In each round both sides run back to back, the first alternating per round. The goal (issue 6) is a plugin " +
			"at least 0.8× as fast as in-process at 4 MiB.",
		Figures: []figure{{"put4MiB", "Put 4 MiB"}, {"get4MiB", "Get 4 MiB"}},
		Systems: []system{
			{Key: "inprocess", Label: "fs target in-process"},
			{Key: "plugin", Label: "through the plugin"},
		},
		Metrics: []metric{{"MBps", "MB/s", true}},
		Compare: []comparison{
			{Label: "plugin / in-process", Metric: "MBps", Num: "plugin", Den: "inprocess", Plain: true, Goal: 0.8, GoalSource: "issue 6"},
		},
	},
}

func (s *section) metric(k string) metric {
	for _, m := range s.Metrics {
		if m.Key == k {
			return m
		}
	}
	return metric{Key: k, Label: k, HigherBetter: true}
}

func (s *section) system(k string) system {
	for _, sy := range s.Systems {
		if sy.Key == k {
			return sy
		}
	}
	return system{Key: k, Label: k}
}

// seriesKey is where a system's measurements of a figure live.
func (s *section) seriesKey(fig, sys, met string) key {
	sec := s.Key
	if from := s.system(sys).From; from != "" {
		sec = from
	}
	return key{Section: sec, Figure: fig, System: sys, Metric: met}
}
