package plugins

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Remote is a Target served by a plugin process that the Manager keeps
// alive. When the process dies (or stops answering), the next call starts
// a new one, and calls are retried under these rules:
//
//   - Info, Has, Delete: retried on any transient error.
//   - Get: retried; a reader that fails mid-stream resumes from the byte it
//     reached with a ranged Get of the rest, so callers see no error.
//   - List: retried; a listing that fails mid-way resumes after the last key
//     yielded (keys come in order), so no key is yielded twice.
//   - Put: retried only when its reader is an io.Seeker (it is rewound to
//     where it started); Put is atomic and idempotent, so a repeat of an
//     interrupted Put with the same bytes leaves the same state.
//   - PutIfAbsent: retried only when the outcome of the failed attempt can
//     be known afterwards, i.e. its reader is an io.Seeker. A transport
//     failure leaves it unknown whether the object was created, so when a
//     retry then finds the key taken (ErrAlreadyExists), the stored object
//     is read back and compared with ours by SHA-256: equal means the
//     earlier attempt created it and PutIfAbsent succeeds, different means
//     someone else won and ErrAlreadyExists is returned. Content-equal
//     objects are indistinguishable, so a caller that needs to tell
//     creators apart (a lock) must put something unique in the object (a
//     fencing token). ErrAlreadyExists on the first attempt is final.
//
// Only ErrTransient errors are retried (a plugin that died counts), at
// most RetryPolicy.Attempts tries with exponential backoff; the caller's
// context bounds it all.
type Remote struct {
	m      *Manager
	cfg    TargetConfig
	kind   string
	path   string
	args   []string
	policy RetryPolicy
	logger *slog.Logger

	// start is a one-slot semaphore serializing plugin starts while
	// letting waiters give up with their context.
	start chan struct{}

	mu     sync.Mutex
	proc   *process
	closed bool
}

var _ Target = (*Remote)(nil)

// Name returns the target's configured name.
func (r *Remote) Name() string { return r.cfg.Name }

// Kind returns the plugin kind serving the target.
func (r *Remote) Kind() string { return r.kind }

// PluginPID returns the process id of the running plugin, or 0 if none is
// running (not started yet, or dead and not restarted yet). For
// diagnostics and tests.
func (r *Remote) PluginPID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return 0
	}
	return r.proc.pid
}

// UsesDataPlane reports whether the running plugin takes payloads over
// the local data plane (false if none is running). For diagnostics and
// tests.
func (r *Remote) UsesDataPlane() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc != nil && r.proc.plane != nil
}

// acquire returns the running plugin, starting one if there is none.
func (r *Remote) acquire(ctx context.Context) (*process, error) {
	select {
	case r.start <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-r.start }()
	r.mu.Lock()
	p, closed := r.proc, r.closed
	r.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if p != nil {
		return p, nil
	}
	p, err := r.startProcess(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		p.kill()
		return nil, ErrClosed
	}
	r.proc = p
	return p, nil
}

// pingTimeout bounds the health check after a transient error.
const pingTimeout = 5 * time.Second

// checkHealth decides, after a transient error from p, whether p's process
// is gone or hung; if so it is killed and forgotten, so the next acquire
// starts a new one. A live plugin relaying a transient error of its
// storage is left alone.
func (r *Remote) checkHealth(p *process, cause error) {
	if !p.client.Exited() {
		rpc, err := p.client.Client()
		if err == nil {
			done := make(chan error, 1)
			go func() { done <- rpc.Ping() }()
			select {
			case err = <-done:
			case <-time.After(pingTimeout):
				err = errors.New("ping timed out")
			}
		}
		if err == nil {
			return
		}
	}
	r.mu.Lock()
	if r.proc != p {
		r.mu.Unlock()
		return // someone else already replaced it
	}
	r.proc = nil
	r.mu.Unlock()
	r.logger.Warn("plugin is gone; it will be restarted", "pid", p.pid, "err", cause)
	p.stop(true)
}

// retry runs fn on the running plugin until it succeeds, fails with a
// non-transient error, or the policy's attempts are used up. fn gets the
// attempt number, from 1.
func (r *Remote) retry(ctx context.Context, op string, fn func(ctx context.Context, p *process, attempt int) error) error {
	return r.retryN(ctx, op, r.policy.Attempts, fn)
}

func (r *Remote) retryN(ctx context.Context, op string, attempts int, fn func(ctx context.Context, p *process, attempt int) error) error {
	delay := r.policy.InitialBackoff
	for attempt := 1; ; attempt++ {
		p, err := r.acquire(ctx)
		if err == nil {
			err = fn(ctx, p, attempt)
			if err == nil {
				return nil
			}
			switch {
			case Classify(err) == ClassTransient:
				r.checkHealth(p, err)
			case ctx.Err() != nil:
				// The call outlived its caller: the plugin may have
				// stopped answering (stopped, deadlocked, stuck on its
				// storage). Find out in the background (the ping is
				// bounded), so that a hung process is replaced rather
				// than handed every later call.
				go r.checkHealth(p, err)
			}
		}
		if Classify(err) != ClassTransient || ctx.Err() != nil {
			return err
		}
		if attempt >= attempts {
			return fmt.Errorf("%s: giving up after %d attempts: %w", op, attempt, err)
		}
		r.logger.Warn("retrying", "op", op, "attempt", attempt, "err", err)
		// Full jitter over the upper half keeps concurrent retries apart.
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (after: %w)", op, context.Cause(ctx), err)
		}
		delay = min(2*delay, r.policy.MaxBackoff)
	}
}

// Info returns the plugin's Info.
func (r *Remote) Info(ctx context.Context) (Info, error) {
	var info Info
	err := r.retry(ctx, "info", func(ctx context.Context, p *process, _ int) error {
		var err error
		info, err = p.target.Info(ctx)
		return err
	})
	return info, err
}

// rewinder returns a function that puts rd back where it is now, or nil if
// rd cannot seek.
func rewinder(rd io.Reader) func() error {
	s, ok := rd.(io.Seeker)
	if !ok {
		return nil
	}
	start, err := s.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil
	}
	return func() error {
		if _, err := s.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("rewinding the data to retry: %w", Permanent(err))
		}
		return nil
	}
}

// Put stores the object, retrying as the type's documentation says.
func (r *Remote) Put(ctx context.Context, key string, rd io.Reader, size int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return r.retryUpload(ctx, "put", rd, func(ctx context.Context, p *process, _ int, _ func() error) error {
		return p.target.Put(ctx, key, rd, size)
	})
}

// retryUpload runs an upload of rd's content: retried like any idempotent
// call only if rd can seek back (once otherwise), rewinding it before every
// attempt after the first. fn gets the rewind for checks of its own.
func (r *Remote) retryUpload(ctx context.Context, op string, rd io.Reader, fn func(ctx context.Context, p *process, attempt int, rewind func() error) error) error {
	rewind := rewinder(rd)
	attempts := r.policy.Attempts
	if rewind == nil {
		attempts = 1
	}
	return r.retryN(ctx, op, attempts, func(ctx context.Context, p *process, attempt int) error {
		if attempt > 1 {
			if err := rewind(); err != nil {
				return err
			}
		}
		return fn(ctx, p, attempt, rewind)
	})
}

// PutIfAbsent creates the object, retrying as the type's documentation says.
func (r *Remote) PutIfAbsent(ctx context.Context, key string, rd io.Reader, size int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return r.retryUpload(ctx, "put-if-absent", rd, func(ctx context.Context, p *process, attempt int, rewind func() error) error {
		err := p.target.PutIfAbsent(ctx, key, rd, size)
		if attempt == 1 || !errors.Is(err, ErrAlreadyExists) {
			return err
		}
		// An earlier attempt's outcome is unknown: is the object ours?
		if err := rewind(); err != nil {
			return err
		}
		ours, herr := r.sameContent(ctx, p, key, rd, size)
		switch {
		case herr != nil:
			return fmt.Errorf("put-if-absent %q: deciding whether an interrupted attempt created the object: %w", key, herr)
		case ours:
			r.logger.Info("put-if-absent: an interrupted attempt had created the object", "key", key)
			return nil
		}
		return err
	})
}

// sameContent reports whether the stored object under key holds exactly
// the size bytes rd yields.
func (r *Remote) sameContent(ctx context.Context, p *process, key string, rd io.Reader, size int64) (bool, error) {
	want := sha256.New()
	if _, err := io.CopyN(want, rd, size); err != nil {
		return false, fmt.Errorf("hashing our data: %w", Permanent(err))
	}
	rc, n, err := p.target.Get(ctx, key, 0, -1)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	if n != size {
		return false, nil
	}
	got := sha256.New()
	if _, err := io.Copy(got, rc); err != nil {
		return false, err
	}
	return bytes.Equal(want.Sum(nil), got.Sum(nil)), nil
}

// Get returns a reader that resumes after plugin failures.
func (r *Remote) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, int64, error) {
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	var rc io.ReadCloser
	var n int64
	err := r.retry(ctx, "get", func(ctx context.Context, p *process, _ int) error {
		var err error
		rc, n, err = p.target.Get(ctx, key, offset, length)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return &resumingReader{r: r, ctx: ctx, key: key, offset: offset, remaining: n, rc: rc, resumes: r.policy.Attempts}, n, nil
}

// resumingReader reads a Get's range, re-requesting the rest after a
// transient failure.
type resumingReader struct {
	r         *Remote
	ctx       context.Context
	key       string
	offset    int64 // of the next byte
	remaining int64
	rc        io.ReadCloser
	resumes   int
}

func (g *resumingReader) Read(p []byte) (int, error) {
	for {
		n, err := g.rc.Read(p)
		g.offset += int64(n)
		g.remaining -= int64(n)
		if err == nil || errors.Is(err, io.EOF) || Classify(err) != ClassTransient || g.resumes == 0 {
			return n, err
		}
		if n > 0 {
			// Data and a transient failure together (a file section's
			// short read with ESTALE): deliver the data; the next Read
			// meets the failure again and resumes.
			return n, nil
		}
		g.resumes--
		g.r.logger.Warn("get: resuming after a failure", "key", g.key, "offset", g.offset, "err", err)
		_ = g.rc.Close()
		var rc io.ReadCloser
		var m int64
		rerr := g.r.retry(g.ctx, "get", func(ctx context.Context, p *process, _ int) error {
			var err error
			rc, m, err = p.target.Get(ctx, g.key, g.offset, g.remaining)
			return err
		})
		if rerr != nil {
			g.rc = io.NopCloser(&errReader{rerr})
			return 0, rerr
		}
		if m != g.remaining {
			_ = rc.Close()
			err := fmt.Errorf("get %q: the object changed while it was read: %w", g.key, ErrPermanent)
			g.rc = io.NopCloser(&errReader{err})
			return 0, err
		}
		g.rc = rc
	}
}

func (g *resumingReader) Close() error { return g.rc.Close() }

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// Has reports which keys exist.
func (r *Remote) Has(ctx context.Context, keys []string) ([]bool, error) {
	var present []bool
	err := r.retry(ctx, "has", func(ctx context.Context, p *process, _ int) error {
		var err error
		present, err = p.target.Has(ctx, keys)
		return err
	})
	return present, err
}

// List yields the objects under prefix, resuming after plugin failures.
func (r *Remote) List(ctx context.Context, prefix, startAfter string) iter.Seq2[ObjectInfo, error] {
	return func(yield func(ObjectInfo, error) bool) {
		// A retry resumes after the last key yielded: keys come in order.
		last := startAfter
		stopped := false
		err := r.retry(ctx, "list", func(ctx context.Context, p *process, _ int) error {
			for o, err := range p.target.List(ctx, prefix, last) {
				if err != nil {
					return err
				}
				last = o.Key
				if !yield(o, nil) {
					stopped = true
					return nil
				}
			}
			return nil
		})
		if err != nil && !stopped {
			yield(ObjectInfo{}, err)
		}
	}
}

// Delete removes the objects.
func (r *Remote) Delete(ctx context.Context, keys []string) error {
	return r.retry(ctx, "delete", func(ctx context.Context, p *process, _ int) error {
		return p.target.Delete(ctx, keys)
	})
}

// Close stops the plugin; it is idempotent.
func (r *Remote) Close() error {
	r.mu.Lock()
	p := r.proc
	r.proc, r.closed = nil, true
	r.mu.Unlock()
	r.m.forget(r)
	if p != nil {
		_ = p.target.Close()
		p.kill()
	}
	return nil
}
