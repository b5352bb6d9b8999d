package coordinator

import (
	"context"
	"sync"

	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/plugins"
)

// targetPool keeps the targets one system operation opened, so that its
// many manifest checks, writes and listings share one plugin process per
// target instead of starting one each (a process start and a TLS handshake
// cost more than the call).
type targetPool struct {
	svc   *targets.Service
	mu    sync.Mutex
	open  map[string]plugins.Target
	users sync.WaitGroup
}

func newTargetPool(svc *targets.Service) *targetPool {
	return &targetPool{svc: svc, open: map[string]plugins.Target{}}
}

func (p *targetPool) get(ctx context.Context, name string) (plugins.Target, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.open[name]; ok {
		return t, nil
	}
	t, err := p.svc.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	p.open[name] = t
	return t, nil
}

// close waits for the calls using the pool, then closes its targets.
func (p *targetPool) close() {
	p.users.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, t := range p.open {
		_ = t.Close()
		delete(p.open, name)
	}
}

// openTarget returns target name and the function to call when done with
// it: from the running operation's pool, or opened for this call alone.
func (c *Coordinator) openTarget(ctx context.Context, name string) (plugins.Target, func(), error) {
	c.poolMu.Lock()
	p := c.pool
	if p != nil {
		p.users.Add(1)
	}
	c.poolMu.Unlock()
	if p != nil {
		t, err := p.get(ctx, name)
		if err != nil {
			p.users.Done()
			return nil, nil, err
		}
		return t, p.users.Done, nil
	}
	t, err := c.opts.Targets.Open(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	return t, func() { _ = t.Close() }, nil
}
