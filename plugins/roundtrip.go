package plugins

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"time"
)

// RoundTripPrefix is where RoundTrip writes its probe object.
const RoundTripPrefix = "strata-target-test/"

// RoundTripResult is what RoundTrip measured. Throughputs are in bytes per
// second of the object's size over the call's latency.
type RoundTripResult struct {
	Key            string
	Size           int64
	PutLatency     time.Duration
	HasLatency     time.Duration
	GetLatency     time.Duration // until the last byte was read
	DeleteLatency  time.Duration
	PutThroughput  float64
	GetThroughput  float64
	Info           Info
	ListedProbeKey bool
}

// RoundTrip checks a target end to end, as `strata target test` does: it
// reads Info, puts an object of size random bytes under
// RoundTripPrefix+<random>, checks Has and List see it, reads it back and
// compares SHA-256, deletes it and checks it is gone. It returns what each
// step took. The probe object is deleted even when a check fails.
func RoundTrip(ctx context.Context, t Target, size int64) (res RoundTripResult, err error) {
	if size < 0 {
		return res, fmt.Errorf("round trip: negative size %d: %w", size, ErrPermanent)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	key := RoundTripPrefix + hex.EncodeToString(id[:])
	res.Key, res.Size = key, size
	if res.Info, err = t.Info(ctx); err != nil {
		return res, fmt.Errorf("round trip: info: %w", err)
	}
	data := make([]byte, size)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)

	start := time.Now()
	if err := t.Put(ctx, key, bytes.NewReader(data), size); err != nil {
		return res, fmt.Errorf("round trip: put %s: %w", key, err)
	}
	res.PutLatency = time.Since(start)
	defer func() {
		if res.DeleteLatency == 0 {
			// A failed check must not leave the probe behind; bounded,
			// since the failure may be a target that stopped answering.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = t.Delete(dctx, []string{key})
		}
	}()

	start = time.Now()
	has, err := t.Has(ctx, []string{key})
	if err != nil {
		return res, fmt.Errorf("round trip: has %s: %w", key, err)
	}
	res.HasLatency = time.Since(start)
	if !has[0] {
		return res, fmt.Errorf("round trip: has %s: the object just put is missing: %w", key, ErrPermanent)
	}
	for o, err := range t.List(ctx, RoundTripPrefix, "") {
		if err != nil {
			return res, fmt.Errorf("round trip: list %s: %w", RoundTripPrefix, err)
		}
		if o.Key == key {
			res.ListedProbeKey = o.Size == size
			break
		}
	}
	if !res.ListedProbeKey {
		return res, fmt.Errorf("round trip: list %s does not show %s with size %d: %w", RoundTripPrefix, key, size, ErrPermanent)
	}

	start = time.Now()
	rc, n, err := t.Get(ctx, key, 0, -1)
	if err != nil {
		return res, fmt.Errorf("round trip: get %s: %w", key, err)
	}
	h := sha256.New()
	_, err = io.Copy(h, rc)
	rc.Close()
	if err != nil {
		return res, fmt.Errorf("round trip: reading %s: %w", key, err)
	}
	res.GetLatency = time.Since(start)
	if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		return res, fmt.Errorf("round trip: %s read back differs from what was put: %w", key, ErrPermanent)
	}

	start = time.Now()
	if err := t.Delete(ctx, []string{key}); err != nil {
		return res, fmt.Errorf("round trip: delete %s: %w", key, err)
	}
	res.DeleteLatency = time.Since(start)
	has, err = t.Has(ctx, []string{key})
	switch {
	case err != nil:
		return res, fmt.Errorf("round trip: has %s after delete: %w", key, err)
	case has[0]:
		return res, fmt.Errorf("round trip: %s still present after delete: %w", key, ErrPermanent)
	}
	res.PutThroughput = float64(size) / res.PutLatency.Seconds()
	res.GetThroughput = float64(size) / res.GetLatency.Seconds()
	return res, nil
}
