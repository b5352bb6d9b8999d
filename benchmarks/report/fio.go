package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type fioDir struct {
	IOBytes int64   `json:"io_bytes"`
	IOPS    float64 `json:"iops"`
	BW      int64   `json:"bw_bytes"`
	Clat    struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

type fioOutput struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

// FioFigures reads a fio --output-format=json file and returns its first
// job's IOPS, MiB/s (reads and writes together) and the 99th percentile
// completion latency in µs of the direction that moved more bytes. Text
// fio prints before the JSON (warnings) is skipped.
func FioFigures(path string) (iops, mibps, p99us float64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, 0, err
	}
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("%s: no JSON object", path)
	}
	var out fioOutput
	if err := json.Unmarshal(b[i:], &out); err != nil {
		return 0, 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	if len(out.Jobs) == 0 {
		return 0, 0, 0, fmt.Errorf("%s: no jobs", path)
	}
	j := out.Jobs[0]
	if j.Error != 0 {
		return 0, 0, 0, fmt.Errorf("%s: job %s ended with error %d", path, j.Name, j.Error)
	}
	if j.Read.IOBytes+j.Write.IOBytes == 0 {
		return 0, 0, 0, fmt.Errorf("%s: job %s moved no data", path, j.Name)
	}
	main := j.Read
	if j.Write.IOBytes > j.Read.IOBytes {
		main = j.Write
	}
	iops = j.Read.IOPS + j.Write.IOPS
	mibps = float64(j.Read.BW+j.Write.BW) / (1 << 20)
	p99us = main.Clat.Percentile["99.000000"] / 1000
	return iops, mibps, p99us, nil
}

// fioCmd prints a fio run's figures as samples.tsv lines.
func fioCmd(w io.Writer, args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("usage: report fio FILE SECTION FIGURE SYSTEM ROUND")
	}
	iops, mibps, p99, err := FioFigures(args[0])
	if err != nil {
		return err
	}
	s, f, sys, r := args[1], args[2], args[3], args[4]
	_, err = fmt.Fprintf(w, "%s\t%s\t%s\t%s\tiops\t%.0f\n%s\t%s\t%s\t%s\tMiBps\t%.1f\n%s\t%s\t%s\t%s\tp99us\t%.0f\n",
		s, f, sys, r, iops, s, f, sys, r, mibps, s, f, sys, r, p99)
	return err
}
