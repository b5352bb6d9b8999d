package backupd

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// uploader packs chunk records and uploads packs, their indexes and map
// pages with at most Options.Uploads uploads in flight. A pack's index is
// Put only after the pack's Put returned.
type uploader struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	r        *Repository
	volume   string
	uploaded *atomic.Int64
	sem      chan struct{} // pack uploads in flight
	pageSem  chan struct{} // map page uploads in flight
	wg       sync.WaitGroup

	cur     []byte
	entries []indexEntry
	// free holds pack buffers whose upload finished, for reuse (a fresh
	// 16 MiB buffer costs clearing it).
	free chan []byte
}

func newUploader(ctx context.Context, r *Repository, volume string, uploaded *atomic.Int64) *uploader {
	ctx, cancel := context.WithCancelCause(ctx)
	return &uploader{ctx: ctx, cancel: cancel, r: r, volume: volume, uploaded: uploaded,
		sem:     make(chan struct{}, r.opts.Uploads),
		pageSem: make(chan struct{}, pageUploads),
		free:    make(chan []byte, r.opts.Uploads+1)}
}

// add appends a chunk record to the current pack, uploading the pack first
// if the record does not fit.
func (u *uploader) add(id ChunkID, rec []byte) error {
	if len(u.cur) > 0 && len(u.cur)+len(rec) > u.r.opts.PackSize {
		if err := u.flush(); err != nil {
			return err
		}
	}
	if u.cur == nil {
		select {
		case u.cur = <-u.free:
		default:
			u.cur = make([]byte, 0, u.r.opts.PackSize)
		}
	}
	u.entries = append(u.entries, indexEntry{ID: id, Offset: uint32(len(u.cur)), Length: uint32(len(rec))})
	u.cur = append(u.cur, rec...)
	return nil
}

// pageUploads is the number of map page uploads in flight. A page is at
// most 16 KiB, so what bounds a scattered incremental (every page changes)
// is the latency of each Put (on the fs target a create, an fsync, a rename
// and a directory fsync), not bandwidth or memory.
const pageUploads = 16

// spawn runs fn once a slot of sem is free.
func (u *uploader) spawn(sem chan struct{}, fn func(ctx context.Context) error) error {
	select {
	case sem <- struct{}{}:
	case <-u.ctx.Done():
		return context.Cause(u.ctx)
	}
	u.wg.Go(func() {
		defer func() { <-sem }()
		if err := fn(u.ctx); err != nil {
			u.cancel(err)
		}
	})
	return nil
}

// flush uploads the current pack and then its index.
func (u *uploader) flush() error {
	if len(u.cur) == 0 {
		return nil
	}
	pack, entries := u.cur, slices.Clone(u.entries)
	u.cur, u.entries = nil, u.entries[:0]
	return u.spawn(u.sem, func(ctx context.Context) error {
		var id ChunkID // random: a re-upload never reuses a swept pack's key
		copy(id[:], randomBytes(len(id)))
		if err := u.r.t.Put(ctx, packKey(id), bytes.NewReader(pack), int64(len(pack))); err != nil {
			return fmt.Errorf("upload pack %s (%d chunks): %w", id, len(entries), err)
		}
		idx := encodeIndex(id, entries)
		if err := u.r.t.Put(ctx, indexKey(id), bytes.NewReader(idx), int64(len(idx))); err != nil {
			return fmt.Errorf("upload index of pack %s: %w", id, err)
		}
		u.r.cacheIndex(id, idx)
		u.uploaded.Add(int64(len(pack) + len(idx)))
		u.r.log.Debug("pack uploaded", "volume", u.volume, "pack", id.String(), "chunks", len(entries), "bytes", len(pack))
		// The target is done with the pack once Put returned.
		select {
		case u.free <- pack[:0]:
		default:
		}
		return nil
	})
}

// putPage uploads a map page.
func (u *uploader) putPage(id ChunkID, obj []byte) {
	_ = u.spawn(u.pageSem, func(ctx context.Context) error {
		if err := u.r.t.Put(ctx, pageKey(id), bytes.NewReader(obj), int64(len(obj))); err != nil {
			return fmt.Errorf("upload map page %s: %w", id, err)
		}
		u.uploaded.Add(int64(len(obj)))
		return nil
	})
}

// finish uploads the last pack and waits for every upload; the error is
// the first upload's failure.
func (u *uploader) finish() error {
	err := u.flush()
	u.wg.Wait()
	if c := context.Cause(u.ctx); c != nil {
		return c
	}
	return err
}

// abort cancels what is in flight and waits for it.
func (u *uploader) abort() {
	u.cancel(context.Canceled)
	u.wg.Wait()
}
