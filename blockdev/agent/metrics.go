package agent

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/strata-block/strata/blockdev"
)

// metrics are the agent's Prometheus collectors, on a registry of its own.
type metrics struct {
	reg     *prometheus.Registry
	ops     *prometheus.CounterVec   // volume, op
	errs    *prometheus.CounterVec   // volume, op
	bytes   *prometheus.CounterVec   // volume, op
	latency *prometheus.HistogramVec // volume, op
	volumes prometheus.GaugeFunc
	api     *prometheus.CounterVec // route, code

	mu    sync.Mutex
	seq   uint64            // counts instrument calls
	named map[string]uint64 // exports with series: seq of the latest instrument
}

func newMetrics(volumeCount func() float64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_volume_ops_total", Help: "Block requests served, by volume (export) and operation.",
		}, []string{"volume", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_volume_errors_total", Help: "Block requests that failed, by volume (export) and operation.",
		}, []string{"volume", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_volume_bytes_total", Help: "Bytes read, written, zeroed or trimmed, by volume (export) and operation.",
		}, []string{"volume", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "strata_volume_op_seconds", Help: "Latency of block requests, by volume (export) and operation.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10), // 10 µs .. 2.6 s
		}, []string{"volume", "op"}),
		volumes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "strata_volumes", Help: "Volumes the agent serves.",
		}, volumeCount),
		api: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_api_requests_total", Help: "Control API requests, by route and HTTP status.",
		}, []string{"route", "code"}),
	}
	m.named = map[string]uint64{}
	m.reg.MustRegister(m.ops, m.errs, m.bytes, m.latency, m.volumes, m.api,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

const (
	opRead = iota
	opWrite
	opFlush
	opZero
	opTrim
	opExtents
	nOps
)

var opNames = [nOps]string{"read", "write", "flush", "zero", "trim", "extents"}

// opMetrics are one (volume, op) pair's collectors, looked up once per
// device so that a request costs no label lookup and no allocation.
type opMetrics struct {
	ops, errs, bytes prometheus.Counter
	latency          prometheus.Observer
}

// instrumented is a blockdev.Volume that counts what goes through it.
type instrumented struct {
	blockdev.Volume
	m [nOps]opMetrics
}

func (m *metrics) instrument(v blockdev.Volume) blockdev.Volume {
	m.mu.Lock()
	m.seq++
	m.named[v.Name()] = m.seq
	m.mu.Unlock()
	iv := &instrumented{Volume: v}
	for op, name := range opNames {
		iv.m[op] = opMetrics{
			ops:     m.ops.WithLabelValues(v.Name(), name),
			errs:    m.errs.WithLabelValues(v.Name(), name),
			bytes:   m.bytes.WithLabelValues(v.Name(), name),
			latency: m.latency.WithLabelValues(v.Name(), name),
		}
	}
	return iv
}

// mark returns the point prune's export list is taken at.
func (m *metrics) mark() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq
}

// prune deletes the series of exports not in live (deleted volumes and
// snapshots), a list taken after mark returned at: each backup-<time> or
// sys-<id> snapshot's FUSE file made series that stayed for good. Those
// instrumented since the mark stay (an export made meanwhile, missing
// from the list). A device still open on a deleted export counts on,
// unscraped.
func (m *metrics) prune(live []string, at uint64) {
	keep := make(map[string]bool, len(live))
	for _, n := range live {
		keep[n] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, seq := range m.named {
		if keep[name] || seq > at {
			continue
		}
		for _, op := range opNames {
			m.ops.DeleteLabelValues(name, op)
			m.errs.DeleteLabelValues(name, op)
			m.bytes.DeleteLabelValues(name, op)
			m.latency.DeleteLabelValues(name, op)
		}
		delete(m.named, name)
	}
}

func (iv *instrumented) done(op int, t0 time.Time, n int64, err error) {
	om := &iv.m[op]
	om.ops.Inc()
	om.latency.Observe(time.Since(t0).Seconds())
	if err != nil {
		om.errs.Inc()
		return
	}
	if n > 0 {
		om.bytes.Add(float64(n))
	}
}

func (iv *instrumented) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	t0 := time.Now()
	n, err := iv.Volume.ReadAt(ctx, p, off)
	iv.done(opRead, t0, int64(n), err)
	return n, err
}

func (iv *instrumented) WriteAt(ctx context.Context, p []byte, off int64, flags blockdev.WriteFlags) (int, error) {
	t0 := time.Now()
	n, err := iv.Volume.WriteAt(ctx, p, off, flags)
	iv.done(opWrite, t0, int64(n), err)
	return n, err
}

func (iv *instrumented) Flush(ctx context.Context) error {
	t0 := time.Now()
	err := iv.Volume.Flush(ctx)
	iv.done(opFlush, t0, 0, err)
	return err
}

func (iv *instrumented) Zero(ctx context.Context, off, length int64, flags blockdev.WriteFlags) error {
	t0 := time.Now()
	err := iv.Volume.Zero(ctx, off, length, flags)
	iv.done(opZero, t0, length, err)
	return err
}

func (iv *instrumented) Trim(ctx context.Context, off, length int64, flags blockdev.WriteFlags) error {
	t0 := time.Now()
	err := iv.Volume.Trim(ctx, off, length, flags)
	iv.done(opTrim, t0, length, err)
	return err
}

func (iv *instrumented) Extents(ctx context.Context, off, length int64) ([]blockdev.Extent, error) {
	t0 := time.Now()
	ext, err := iv.Volume.Extents(ctx, off, length)
	iv.done(opExtents, t0, 0, err)
	return ext, err
}
