package snapshot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// raceBlock renders version ver of block b; version 0 is all zeros.
func raceBlock(buf []byte, b, ver uint64) {
	if ver == 0 {
		clear(buf)
		return
	}
	binary.LittleEndian.PutUint64(buf, b)
	binary.LittleEndian.PutUint64(buf[8:], ver)
	for i := 16; i < len(buf); i++ {
		buf[i] = byte(ver*31 + b + uint64(i))
	}
}

// raceVersion decodes a block rendered by raceBlock, or fails.
func raceVersion(buf []byte, b uint64) (uint64, error) {
	if bytes.Equal(buf, zeroBlock[:]) {
		return 0, nil
	}
	if got := binary.LittleEndian.Uint64(buf); got != b {
		return 0, fmt.Errorf("block %d holds block %d's content", b, got)
	}
	ver := binary.LittleEndian.Uint64(buf[8:])
	want := make([]byte, BlockSize)
	raceBlock(want, b, ver)
	if !bytes.Equal(buf, want) {
		return 0, fmt.Errorf("block %d version %d is torn", b, ver)
	}
	return ver, nil
}

type raceWrite struct {
	ver    uint64
	t0, t1 uint64 // clock before the call and after it returned
}

// TestConcurrentIO runs writers, readers, snapshots and merges at once
// (run it with -race). Each writer owns a region and checks it reads its
// own writes; readers check every block is whole; every snapshot that
// survives holds each block's last write acknowledged before the snapshot
// started, or a later one that started before it returned.
func TestConcurrentIO(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const (
		writers      = 4
		blocksPer    = 64
		opsPerWriter = 1500
	)
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Create(ctx, "race", writers*blocksPer*BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Uint64
	hist := make([][]raceWrite, writers*blocksPer) // per block, guarded by its writer
	var histMu sync.Mutex
	var wg sync.WaitGroup
	var stop atomic.Bool
	errc := make(chan error, 16)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		stop.Store(true)
	}
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, 4*BlockSize)
			got := make([]byte, 4*BlockSize)
			ver := uint64(w) << 32
			for i := 0; i < opsPerWriter && !stop.Load(); i++ {
				n := uint64(1 + rng.IntN(4))
				b := uint64(w*blocksPer) + uint64(rng.IntN(blocksPer-int(n)+1))
				ver++
				zero := rng.IntN(8) == 0
				for j := range n {
					raceBlock(buf[j*BlockSize:(j+1)*BlockSize], b+j, ver)
				}
				t0 := clock.Add(1)
				var err error
				switch {
				case zero && rng.IntN(2) == 0:
					err = v.Zero(int64(b)*BlockSize, int64(n)*BlockSize)
				case zero:
					err = v.Trim(int64(b)*BlockSize, int64(n)*BlockSize)
				default:
					_, err = v.WriteAt(buf[:n*BlockSize], int64(b)*BlockSize)
				}
				t1 := clock.Add(1)
				if err != nil {
					fail(err)
					return
				}
				wv := ver
				if zero {
					wv = 0
				}
				histMu.Lock()
				for j := range n {
					hist[b+j] = append(hist[b+j], raceWrite{ver: wv, t0: t0, t1: t1})
				}
				histMu.Unlock()
				if _, err := v.ReadAt(got[:n*BlockSize], int64(b)*BlockSize); err != nil {
					fail(err)
					return
				}
				for j := range n {
					gv, err := raceVersion(got[j*BlockSize:(j+1)*BlockSize], b+j)
					if err == nil && gv != wv {
						err = fmt.Errorf("block %d: read version %d right after writing %d", b+j, gv, wv)
					}
					if err != nil {
						fail(err)
						return
					}
				}
				if rng.IntN(50) == 0 {
					if err := v.Flush(); err != nil {
						fail(err)
						return
					}
				}
			}
		})
	}
	// Readers: every block must be whole.
	var writersDone atomic.Bool
	var rwg sync.WaitGroup
	for r := range 2 {
		rwg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			got := make([]byte, 16*BlockSize)
			for !stop.Load() && !writersDone.Load() {
				b := uint64(rng.IntN(writers*blocksPer - 16))
				if _, err := v.ReadAt(got, int64(b)*BlockSize); err != nil {
					fail(err)
					return
				}
				for j := range uint64(16) {
					if _, err := raceVersion(got[j*BlockSize:(j+1)*BlockSize], b+j); err != nil {
						fail(fmt.Errorf("reader: %w", err))
						return
					}
				}
			}
		})
	}
	// Snapshots and online merges.
	type snapTime struct {
		name   string
		s0, s1 uint64
	}
	var snaps []snapTime
	snapDone := make(chan struct{})
	go func() {
		defer close(snapDone)
		rng := rand.New(rand.NewPCG(3, 3))
		for i := 0; !stop.Load() && !writersDone.Load(); i++ {
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			name := fmt.Sprintf("s%d", i)
			s0 := clock.Add(1)
			if err := v.Snapshot(ctx, name); err != nil {
				fail(err)
				return
			}
			s1 := clock.Add(1)
			snaps = append(snaps, snapTime{name, s0, s1})
			if len(snaps) > 4 {
				k := rng.IntN(len(snaps) - 1)
				if err := v.DeleteSnapshot(ctx, snaps[k].name); err != nil {
					fail(err)
					return
				}
				snaps = append(snaps[:k], snaps[k+1:]...)
			}
		}
	}()
	wg.Wait()
	writersDone.Store(true)
	rwg.Wait()
	<-snapDone
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if len(snaps) == 0 {
		t.Fatal("no snapshot was taken")
	}
	got := make([]byte, BlockSize)
	for _, sn := range snaps {
		vw, err := v.OpenSnapshot(ctx, sn.name)
		if err != nil {
			t.Fatal(err)
		}
		for b := range uint64(len(hist)) {
			if _, err := vw.ReadAt(got, int64(b)*BlockSize); err != nil {
				t.Fatal(err)
			}
			gv, err := raceVersion(got, b)
			if err != nil {
				t.Fatalf("snapshot %s: %v", sn.name, err)
			}
			// Allowed: the last write acknowledged before s0 (or the initial
			// zeros), or any write that started before s1 and was not yet
			// acknowledged at s0.
			var base uint64
			allowed := map[uint64]bool{}
			for _, w := range hist[b] {
				if w.t1 < sn.s0 {
					base = w.ver
				} else if w.t0 < sn.s1 {
					allowed[w.ver] = true
				}
			}
			allowed[base] = true
			if !allowed[gv] {
				t.Fatalf("snapshot %s: block %d holds version %d; allowed %v", sn.name, b, gv, allowed)
			}
		}
		vw.Close()
	}
	t.Logf("%d snapshots verified at the end, depth %d", len(snaps), v.Depth())
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStripeWrap runs two writers whose stripe sets wrap around the stripe
// table in opposite orders; locking in table order must not deadlock.
func TestStripeWrap(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const stripe = BlockSize << stripeShift
	v, err := s.Create(ctx, "wrap", 2*nStripes*stripe)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, nStripes*stripe) // stripes 0..63
	small := make([]byte, 2*BlockSize)   // straddles stripes 63 and 64 (= 0)
	smallOff := int64(nStripes*stripe - BlockSize)
	done := make(chan error, 2)
	go func() {
		for range 50 {
			if _, err := v.WriteAt(big, 0); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	go func() {
		for range 2000 {
			if _, err := v.WriteAt(small, smallOff); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("writers deadlocked on stripe locks")
		}
	}
}
