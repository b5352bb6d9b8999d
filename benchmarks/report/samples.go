package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A key names one series of measurements: one metric of one system on one
// figure (a fio job, a backup step, a volume size) of a section.
type key struct {
	Section, Figure, System, Metric string
}

// Samples holds every measurement of a run, by series and round.
type Samples struct {
	byKey map[key]map[int]float64
}

// ReadSamples parses samples.tsv lines: section, figure, system, round,
// metric, value, tab-separated. Blank lines and lines starting with # are
// skipped; anything else malformed is an error naming the line.
func ReadSamples(r io.Reader) (*Samples, error) {
	s := &Samples{byKey: map[key]map[int]float64{}}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		f := strings.Split(t, "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("samples line %d: %d fields, want 6: %q", line, len(f), t)
		}
		round, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("samples line %d: round %q: %w", line, f[3], err)
		}
		v, err := strconv.ParseFloat(f[5], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("samples line %d: value %q is not a finite number", line, f[5])
		}
		s.Add(key{f[0], f[1], f[2], f[4]}, round, v)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// Add records one value; a later value for the same round replaces it.
func (s *Samples) Add(k key, round int, v float64) {
	m := s.byKey[k]
	if m == nil {
		m = map[int]float64{}
		s.byKey[k] = m
	}
	m[round] = v
}

// Rounds returns the series' values by round (nil if it was not measured).
func (s *Samples) Rounds(k key) map[int]float64 { return s.byKey[k] }

// Has reports whether anything of the section was measured.
func (s *Samples) Has(section string) bool {
	for k := range s.byKey {
		if k.Section == section {
			return true
		}
	}
	return false
}

// Stat is the summary of a series over its rounds.
type Stat struct {
	N                int
	Min, Median, Max float64
}

// Valid reports whether the series had any value.
func (st Stat) Valid() bool { return st.N > 0 }

// Summarize returns min, median and max of vs (the median of an even count
// is the mean of the two middle values).
func Summarize(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	v := slices.Clone(vs)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Stat{N: n, Min: v[0], Median: med, Max: v[n-1]}
}

// Stat summarizes one series.
func (s *Samples) Stat(k key) Stat {
	var vs []float64
	for _, v := range s.byKey[k] {
		vs = append(vs, v)
	}
	return Summarize(vs)
}

// Meta is the run's description: key/value pairs from meta.tsv, plus the
// stages' outcome from stages.tsv.
type Meta struct {
	kv     map[string]string
	Stages []Stage
}

// Stage is one line of stages.tsv: what happened to a stage of the run.
type Stage struct {
	Name    string
	Status  string // ok, failed, unavailable, skipped
	Seconds float64
	Note    string
	Load    string // 1/5/15-minute load averages when the stage started
}

// Get returns a meta value, or "?" when the run did not record it.
func (m *Meta) Get(k string) string {
	if v, ok := m.kv[k]; ok && v != "" {
		return v
	}
	return "?"
}

// Stage returns the named stage's record, if the run has one.
func (m *Meta) Stage(name string) (Stage, bool) {
	for _, st := range m.Stages {
		if st.Name == name {
			return st, true
		}
	}
	return Stage{}, false
}

// ReadMeta reads meta.tsv and stages.tsv from dir; both are optional (a
// stage script run on its own writes neither).
func ReadMeta(dir string) (*Meta, error) {
	m := &Meta{kv: map[string]string{}}
	if err := eachTSV(filepath.Join(dir, "meta.tsv"), func(f []string) error {
		if len(f) < 2 {
			return fmt.Errorf("want key<TAB>value, got %q", strings.Join(f, "\t"))
		}
		m.kv[f[0]] = strings.Join(f[1:], "\t")
		return nil
	}); err != nil {
		return nil, err
	}
	if err := eachTSV(filepath.Join(dir, "stages.tsv"), func(f []string) error {
		if len(f) < 3 {
			return fmt.Errorf("want stage<TAB>status<TAB>seconds[<TAB>note[<TAB>load]], got %q", strings.Join(f, "\t"))
		}
		secs, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			return fmt.Errorf("seconds %q: %w", f[2], err)
		}
		st := Stage{Name: f[0], Status: f[1], Seconds: secs}
		if len(f) > 3 {
			st.Note = f[3]
		}
		if len(f) > 4 {
			st.Load = f[4]
		}
		m.Stages = append(m.Stages, st)
		return nil
	}); err != nil {
		return nil, err
	}
	return m, nil
}

func eachTSV(path string, fn func([]string) error) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimRight(sc.Text(), "\r\n")
		if strings.TrimSpace(t) == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if err := fn(strings.Split(t, "\t")); err != nil {
			return fmt.Errorf("%s line %d: %w", path, line, err)
		}
	}
	return sc.Err()
}

// ReadBottlenecks parses the hand-maintained bottleneck notes: each
// "## KEY [KEY...]" heading (KEY = section/figure, e.g. nbd/write1m) starts
// the note for those keys, which runs to the next such heading. Text before
// the first heading is the file's own preamble and is ignored.
func ReadBottlenecks(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	notes := map[string]string{}
	var keys []string
	var body []string
	flush := func() {
		text := strings.TrimSpace(strings.Join(body, "\n"))
		for _, k := range keys {
			notes[k] = text
		}
		body = nil
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if h, ok := strings.CutPrefix(l, "## "); ok {
			flush()
			keys = strings.Fields(h)
			continue
		}
		if keys != nil {
			body = append(body, l)
		}
	}
	flush()
	return notes, nil
}
