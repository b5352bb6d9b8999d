package backupd

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/strata-block/strata/plugins"
)

// prefixLocks holds GC's leases: one object per running GC.
const prefixLocks = "locks/"

// The GC lease's timing (FORMAT.md, "Garbage collection"). A running GC
// renews its lease every leaseRenew; a lease not renewed for leaseStale
// is abandoned (its GC died) and the next GC removes it. A GC stops
// before deleting anything once its own last renewal is older than
// leaseSafe, well before others may take its lease as abandoned.
const (
	leaseRenew = time.Minute
	leaseSafe  = 5 * time.Minute
	leaseStale = 15 * time.Minute
	// maxClockSkew is how far the wall clocks of the hosts that use a
	// repository may disagree (FORMAT.md, "Garbage collection"): another
	// GC takes a lease as abandoned leaseStale after its renewal by its own
	// clock, and the lease's holder stops leaseSafe after it by its own.
	maxClockSkew = leaseStale - leaseSafe
)

// leaseBody is a lease object's content.
type leaseBody struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Taken   time.Time `json:"taken"`
	Renewed time.Time `json:"renewed"`
}

// gcLease is this process's lease on running GC on the repository.
type gcLease struct {
	r    *Repository
	key  string
	body leaseBody
	now  func() time.Time

	mu      sync.Mutex
	renewed time.Time // this host's clock: when the last successful renewal was sent
	lastErr error     // the last renewal's failure, if it failed
	lost    error     // set once the lease may no longer be exclusive

	stop context.CancelFunc
	done chan struct{}
}

// takeGCLease makes this GC the only one running on the repository: it
// writes a lease object under a new key, then lists the leases. Any other
// lease renewed within leaseStale means another GC runs: this one removes
// its own lease and fails with ErrBusy. Two GCs starting together may
// both fail, never both run: each wrote its lease before listing, so the
// later listing sees the other's. Abandoned leases are removed.
func (r *Repository) takeGCLease(ctx context.Context, now func() time.Time) (*gcLease, error) {
	host, _ := os.Hostname()
	l := &gcLease{r: r, key: prefixLocks + "gc-" + hex.EncodeToString(randomBytes(8)), now: now,
		body: leaseBody{Host: host, PID: os.Getpid(), Taken: now().UTC()}}
	sent := time.Now()
	if err := l.write(ctx); err != nil {
		l.remove() // it may have landed
		return nil, fmt.Errorf("gc: taking the lease: %w", err)
	}
	l.renewed = sent
	var busy error
	for o, err := range r.t.List(ctx, prefixLocks, "") {
		if err != nil {
			busy = fmt.Errorf("gc: list %s: %w", prefixLocks, err)
			break
		}
		if o.Key == l.key || !strings.HasPrefix(o.Key, prefixLocks+"gc-") {
			continue
		}
		b, err := r.getAll(ctx, o.Key, 4096)
		if errors.Is(err, plugins.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			busy = fmt.Errorf("gc: reading lease %s: %w", o.Key, err)
			break
		}
		var other leaseBody
		if err != nil || json.Unmarshal(b, &other) != nil || other.Renewed.IsZero() {
			// Leases are written whole (Put is atomic), so this is
			// damage, not a GC's lease in the making.
			r.log.Warn("removing a GC lease that does not decode", "op", "gc", "lease", o.Key)
			other.Renewed = time.Time{}
		}
		if age := now().Sub(other.Renewed); age > leaseStale || age < -leaseStale {
			// Not renewed for leaseStale, or dated that far ahead (a host
			// whose clock ran ahead): abandoned or damaged.
			r.log.Warn("removing an abandoned GC lease", "op", "gc", "lease", o.Key, "host", other.Host, "pid", other.PID, "renewed", other.Renewed)
			if err := r.t.Delete(ctx, []string{o.Key}); err != nil {
				busy = fmt.Errorf("gc: removing abandoned lease %s: %w", o.Key, err)
				break
			}
			continue
		}
		busy = fmt.Errorf("gc: lease %s of host %q pid %d, renewed %s (taken as abandoned %v after its last renewal): %w",
			o.Key, other.Host, other.PID, other.Renewed.Format(time.RFC3339), leaseStale, ErrBusy)
		break
	}
	if busy != nil {
		l.remove()
		return nil, busy
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stop, l.done = cancel, make(chan struct{})
	go l.renewLoop(rctx)
	return l, nil
}

func (l *gcLease) write(ctx context.Context) error {
	l.body.Renewed = l.now().UTC()
	return l.r.putBytes(ctx, l.key, marshalJSON(l.body))
}

// renewLoop renews the lease every leaseRenew until stopped. A lease that
// lapsed (check) or disappeared (another GC took it as abandoned) is lost
// for good.
func (l *gcLease) renewLoop(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.check() != nil {
			return // lapsed: never renewed again, so never exclusive again
		}
		if err := l.renew(ctx); err != nil {
			l.r.log.Warn("renewing the GC lease", "op", "gc", "lease", l.key, "err", err)
		}
	}
}

// renew checks that the lease object is still there and writes it again.
// A renewal counts from when it was sent, and only if the lease had not
// lapsed when it returned: a Put that stalled past leaseSafe may land
// after another GC took the lease as abandoned, and must not revive it.
func (l *gcLease) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, leaseRenew)
	defer cancel()
	sent := time.Now()
	has, err := l.r.t.Has(ctx, []string{l.key})
	if err == nil && !has[0] {
		l.mu.Lock()
		l.lost = fmt.Errorf("gc: lease %s was removed (another GC took it as abandoned): %w", l.key, ErrLeaseLost)
		l.mu.Unlock()
		return l.lost
	}
	if err == nil {
		err = l.write(ctx)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
	if err == nil && l.lapsedLocked() == nil {
		l.renewed = sent
	}
	return err
}

// check returns an error if the lease may no longer be exclusive: GC
// calls it before each deletion of an object.
func (l *gcLease) check() error {
	if l.r == nil {
		return nil // DryRun: no lease, and nothing is deleted
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lapsedLocked()
}

// lapsedLocked is check with l.mu held. Time is measured by the monotonic
// and the wall clock (elapsed): a host that was suspended must not go on.
// A lapse is for good: another GC may take the lease as abandoned once
// leaseStale has passed.
func (l *gcLease) lapsedLocked() error {
	if l.lost == nil {
		if age := elapsed(time.Now(), l.renewed); age > leaseSafe {
			why := "renewals were too slow, or the host was suspended"
			if l.lastErr != nil {
				why = "the last renewal failed: " + l.lastErr.Error()
			}
			l.lost = fmt.Errorf("gc: the lease was last renewed %v ago, more than %v (%s): %w",
				age.Round(time.Second), leaseSafe, why, ErrLeaseLost)
		}
	}
	return l.lost
}

// delete deletes key, only while the lease holds, and gives the Delete no
// longer than the lease is sure to hold. Every change GC makes to the
// target goes through delete or put: a run whose lease lapsed decided on
// a view another run may have changed since.
func (l *gcLease) delete(ctx context.Context, key string) error {
	return l.do(ctx, func(ctx context.Context) error { return l.r.t.Delete(ctx, []string{key}) })
}

// put is delete's counterpart for writing key.
func (l *gcLease) put(ctx context.Context, key string, b []byte) error {
	return l.do(ctx, func(ctx context.Context) error { return l.r.putBytes(ctx, key, b) })
}

func (l *gcLease) do(ctx context.Context, op func(context.Context) error) error {
	if err := l.check(); err != nil {
		return err
	}
	l.mu.Lock()
	until := l.renewed.Add(leaseSafe)
	l.mu.Unlock()
	lapse := fmt.Errorf("gc: the lease's safe period ended during the operation: %w", ErrLeaseLost)
	ctx, cancel := context.WithDeadlineCause(ctx, until, lapse)
	defer cancel()
	if err := op(ctx); err != nil {
		if cause := context.Cause(ctx); cause == lapse {
			return fmt.Errorf("%w (%w)", cause, err)
		}
		return err
	}
	return nil
}

// release stops renewing and removes the lease.
func (l *gcLease) release() {
	l.stop()
	<-l.done
	l.remove()
}

// remove removes the lease object, even if the GC's context is cancelled.
func (l *gcLease) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.r.t.Delete(ctx, []string{l.key}); err != nil {
		l.r.log.Warn("removing the GC lease; the next GC takes it as abandoned after "+leaseStale.String(), "op", "gc", "lease", l.key, "err", err)
	}
}
