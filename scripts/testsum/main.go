package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail
}

// skip is a skipped test and the output it left (its reason).
type skip struct {
	pkg, test, output string
}

type summary struct {
	out       io.Writer
	allow     *regexp.Regexp
	verbose   bool                        // print passed tests' output too
	buf       map[string]*strings.Builder // output per package/test
	started   map[string]bool             // packages without a result yet
	failed    int
	passed    int
	skipped   []skip
	malformed int
}

func key(pkg, test string) string { return pkg + "\x00" + test }

func (s *summary) add(line []byte) {
	var e event
	if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
		// Not test2json (go's own errors): pass it through.
		s.malformed++
		fmt.Fprintf(s.out, "%s\n", line)
		return
	}
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
		return
	case "build-fail":
		s.failed++
		fmt.Fprintf(s.out, "build of %s failed\n", e.ImportPath)
		return
	case "start":
		s.started[e.Package] = true
		return
	}
	if e.Test == "" {
		s.pkgEvent(e)
		return
	}
	k := key(e.Package, e.Test)
	b := s.buf[k]
	if b == nil {
		b = &strings.Builder{}
		s.buf[k] = b
	}
	switch e.Action {
	case "output":
		b.WriteString(e.Output)
	case "pass":
		s.passed++
		if s.verbose {
			fmt.Fprint(s.out, b.String())
		}
		delete(s.buf, k)
	case "fail":
		s.failed++
		fmt.Fprint(s.out, b.String())
		delete(s.buf, k)
	case "skip":
		s.skipped = append(s.skipped, skip{pkg: e.Package, test: e.Test, output: b.String()})
		delete(s.buf, k)
	}
}

// pkgEvent handles an event of a package as a whole: its result line
// goes out; "PASS" and the like do not.
func (s *summary) pkgEvent(e event) {
	switch e.Action {
	case "output":
		switch strings.TrimSpace(e.Output) {
		case "PASS", "FAIL", "":
			return
		}
		if strings.HasPrefix(e.Output, "=== ") || strings.HasPrefix(e.Output, "--- ") {
			return
		}
		fmt.Fprint(s.out, e.Output)
	case "pass", "skip":
		delete(s.started, e.Package)
	case "fail":
		delete(s.started, e.Package)
		s.failed++
		// Output of tests that never ended (a panic, a timeout).
		var left []string
		for k := range s.buf {
			if strings.HasPrefix(k, e.Package+"\x00") {
				left = append(left, k)
			}
		}
		slices.Sort(left)
		for _, k := range left {
			fmt.Fprint(s.out, s.buf[k].String())
			delete(s.buf, k)
		}
	}
}

// report prints the skips and returns whether the run is good.
func (s *summary) report() bool {
	ok := s.failed == 0
	bad := 0
	for _, sk := range s.skipped {
		allowed := s.allow != nil && s.allow.MatchString(sk.test)
		if !allowed {
			bad++
		}
		mark := "allowed"
		if !allowed {
			mark = "NOT ALLOWED"
		}
		fmt.Fprintf(s.out, "SKIP (%s) %s %s\n", mark, sk.pkg, sk.test)
		for _, l := range strings.Split(strings.TrimRight(sk.output, "\n"), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "=== ") {
				fmt.Fprintf(s.out, "    %s\n", l)
			}
		}
	}
	pkgs := make([]string, 0, len(s.started))
	for p := range s.started {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		fmt.Fprintf(s.out, "no result for package %s (the run was cut short)\n", p)
	}
	fmt.Fprintf(s.out, "testsum: %d passed, %d failed, %d skipped (%d not allowed)\n", s.passed, s.failed, len(s.skipped), bad)
	return ok && bad == 0 && len(pkgs) == 0
}

func run(in io.Reader, out io.Writer, allow *regexp.Regexp, verbose bool) (bool, error) {
	s := &summary{out: out, allow: allow, verbose: verbose, buf: map[string]*strings.Builder{}, started: map[string]bool{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		s.add(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("reading go test -json: %w", err)
	}
	return s.report(), nil
}

func main() {
	allowSkip := flag.String("allow-skip", "", "regexp of the test names (full match) that may skip")
	verbose := flag.Bool("v", false, "print the output of passed tests too")
	flag.Parse()
	var allow *regexp.Regexp
	if *allowSkip != "" {
		var err error
		if allow, err = regexp.Compile("^(?:" + *allowSkip + ")$"); err != nil {
			fmt.Fprintf(os.Stderr, "testsum: -allow-skip: %v\n", err)
			os.Exit(2)
		}
	}
	ok, err := run(os.Stdin, os.Stdout, allow, *verbose)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testsum: %v\n", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}
