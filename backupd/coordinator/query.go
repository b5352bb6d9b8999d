package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/backupd/targets"
	"github.com/strata-block/strata/plugins"
)

func (c *Coordinator) summary(r *Run, m *Manifest) *Summary {
	s := &Summary{ID: r.ID, Token: r.Token, State: r.State, Started: r.Started, Finished: r.Finished, Error: r.Error,
		CopiesPending: r.CopiesPending, Config: r.Config, Known: true}
	if r.Config != nil {
		for _, t := range r.Config.Targets {
			s.Targets = append(s.Targets, t.Name)
		}
	}
	switch {
	case m != nil:
		s.Volumes = m.Volumes
	case r.Config != nil:
		// The acknowledged volumes so far (all of them once committed),
		// in the configuration's order.
		for _, v := range r.Config.Volumes {
			if a, ok := r.Acks[ackKey(v.Agent, v.Name)]; ok {
				s.Volumes = append(s.Volumes, a.VolumeBackup)
			}
		}
	}
	return s
}

func manifestSummary(m *Manifest, where []string) *Summary {
	cfg := m.Config
	return &Summary{ID: m.ID, Token: m.Token, State: StateCommitted, Started: m.Started, Finished: m.Committed,
		Volumes: m.Volumes, Targets: where, Config: &cfg}
}

// List returns the system backups the coordinator recorded, plus those
// whose manifests the registered targets hold and it has no record of.
// A target that does not answer is skipped with a warning.
func (c *Coordinator) List(ctx context.Context) ([]*Summary, error) {
	runs, err := c.st.runs()
	if err != nil {
		return nil, err
	}
	out := make([]*Summary, 0, len(runs))
	known := map[string]bool{}
	for _, r := range runs {
		s := c.summary(r, nil)
		s.Config = nil
		out = append(out, s)
		known[r.ID] = true
	}
	found := map[string][]string{}
	for _, t := range c.opts.Targets.Registry().List() {
		ids, err := c.listManifests(ctx, t.Name)
		if err != nil {
			c.log.Warn("list system manifests", "target", t.Name, "err", err)
			continue
		}
		for _, id := range ids {
			if !known[id] {
				found[id] = append(found[id], t.Name)
			}
		}
	}
	for id, where := range found {
		m, err := c.loadManifest(ctx, where[0], id)
		if err != nil {
			out = append(out, &Summary{ID: id, State: "unreadable", Error: err.Error(), Targets: where})
			continue
		}
		s := manifestSummary(m, where)
		s.Config = nil
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *Summary) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (c *Coordinator) listManifests(ctx context.Context, target string) ([]string, error) {
	tg, done, err := c.openTarget(ctx, target)
	if err != nil {
		return nil, err
	}
	defer done()
	return listManifestIDs(ctx, tg)
}

func listManifestIDs(ctx context.Context, tg plugins.Target) ([]string, error) {
	var ids []string
	for o, err := range tg.List(ctx, manifestPrefix, "") {
		if err != nil {
			return nil, err
		}
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, manifestPrefix), ".json")
		if ok && validID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Info describes system backup id: the coordinator's record, with the
// manifest when it is committed; or, without a record, the manifest found
// on a registered target.
func (c *Coordinator) Info(ctx context.Context, id string) (*Summary, error) {
	if !validID(id) {
		return nil, fmt.Errorf("system backup id %q: %w", id, ErrInvalid)
	}
	r, err := c.st.run(id)
	if err == nil {
		var m *Manifest
		if r.State == StateCommitted {
			if m, err = c.loadManifest(ctx, r.Config.DefaultTarget(), id); err != nil {
				return nil, err
			}
		}
		return c.summary(r, m), nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	m, where, err := c.find(ctx, id)
	if err != nil {
		return nil, err
	}
	return manifestSummary(m, []string{where}), nil
}

// find loads manifest id from the first registered target that holds a
// good copy (the default first). A damaged copy is reported when no good
// one exists.
func (c *Coordinator) find(ctx context.Context, id string) (*Manifest, string, error) {
	ts := c.opts.Targets.Registry().List()
	slices.SortStableFunc(ts, func(a, b targets.Target) int {
		if a.Default != b.Default {
			if a.Default {
				return -1
			}
			return 1
		}
		return 0
	})
	var firstErr error
	for _, t := range ts {
		m, err := c.loadManifest(ctx, t.Name, id)
		if err == nil {
			return m, t.Name, nil
		}
		if errors.Is(err, plugins.ErrNotFound) {
			continue
		}
		c.log.Warn("system manifest copy does not load", "system", id, "target", t.Name, "err", err)
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, "", firstErr
	}
	return nil, "", fmt.Errorf("system backup %s: on no registered target: %w", id, ErrNotFound)
}

// Remove deletes system backup id: it is recorded as removing (with the
// backups it names), its manifest is deleted from every target, then the
// volume backups no other system backup names, then the record. An
// interrupted removal is finished by the next start, system backup or
// removal. A copy on a target that is no longer registered is refused:
// it would keep naming the backups deleted here.
func (c *Coordinator) Remove(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("system backup id %q: %w", id, ErrInvalid)
	}
	if err := c.lock(ctx, "removal of system backup "+id); err != nil {
		return err
	}
	defer c.unlock()
	// Finish what is started even if the client goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	r, rerr := c.st.run(id)
	if rerr == nil {
		switch r.State {
		case StateOpen, StateCommitting, StateFailing:
			return fmt.Errorf("system backup %s is %s: %w", id, r.State, ErrBusy)
		case StateFailed:
			c.releaseFailed(ctx, r)
			if r, err := c.st.run(id); err == nil && !r.Released {
				if until := c.lateUntil(r); time.Now().Before(until) {
					return fmt.Errorf("system backup %s failed at %s; an agent may still commit a volume backup it started for it until %s, which its record is needed to delete: try again after that: %w",
						id, r.Finished.Format(time.RFC3339), until.Format(time.RFC3339), ErrBusy)
				}
				return fmt.Errorf("system backup %s failed and its volume backups could not all be deleted yet (see the server log); try again", id)
			}
			return c.st.deleteRun(id)
		case StateRemoving:
			return c.finishRemove(ctx, r)
		}
	} else if !errors.Is(rerr, ErrNotFound) {
		return rerr
	}
	m, _, err := c.find(ctx, id)
	if err != nil {
		return err
	}
	if err := c.sameTargets(ctx, id, m.Config); err != nil {
		return err
	}
	cfg := m.Config
	rec := &Run{ID: id, Token: m.Token, State: StateRemoving, Started: m.Started, Finished: m.Committed, Config: &cfg, Acks: m.acks()}
	if err := c.st.put(rec); err != nil {
		return err
	}
	return c.finishRemove(ctx, rec)
}

// sameTargets checks, before a removal starts, that every target of
// system backup id's configuration is registered here under its name, and
// that one registered at another URL than the configuration's holds the
// copy (the same storage reached another way, a share mounted elsewhere):
// a copy on a target no longer registered, or at the old URL of a name
// registered again elsewhere, would outlive the removal and keep naming
// the backups deleted with it.
func (c *Coordinator) sameTargets(ctx context.Context, id string, cfg Config) error {
	reg := c.opts.Targets.Registry()
	for _, t := range cfg.Targets {
		rt, err := reg.Get(t.Name)
		if err != nil {
			return fmt.Errorf("system backup %s has a copy on target %q (%s), which is not registered: register it again (strata target add %s URL) so that the copy goes with it: %w", id, t.Name, t.URL, t.Name, ErrInvalid)
		}
		if rt.URL == t.URL {
			continue
		}
		_, lerr := c.loadManifest(ctx, t.Name, id)
		if lerr == nil {
			continue
		}
		return fmt.Errorf("system backup %s has a copy on target %q at %s, but %q is registered at %s now, which does not hold it (%v): register the old location under a name of its own (or again as %q) so that the copy goes with it: %w", id, t.Name, t.URL, t.Name, rt.URL, lerr, t.Name, ErrInvalid)
	}
	return nil
}

// finishRemove deletes a removing run's manifest copies, then releases
// its backups, then its record. (Its targets were checked when the
// removal started: an interrupted one is finished wherever they are now
// registered, or a target that died meanwhile would keep it forever.)
func (c *Coordinator) finishRemove(ctx context.Context, r *Run) error {
	for _, t := range r.Config.Targets {
		if err := c.deleteManifest(ctx, t.Name, r.ID); err != nil {
			return fmt.Errorf("remove system backup %s from target %q: %w", r.ID, t.Name, err)
		}
	}
	held, err := c.heldElsewhere(ctx, r)
	if err != nil {
		return err
	}
	for _, a := range r.Acks {
		if err := c.releaseBackup(ctx, r.ID, a, held); err != nil {
			return err
		}
	}
	if err := c.st.deleteRun(r.ID); err != nil {
		return err
	}
	c.log.Info("system backup removed", "system", r.ID)
	return nil
}

// heldSet is what keeps volume backups of a system backup being removed
// alive: the backup ids other system backups name. unsure is set when a
// system manifest does not load: it may name any of them.
type heldSet struct {
	ids    map[string]bool
	unsure bool
}

func (h *heldSet) holds(id string) bool { return h.unsure || h.ids[id] }

// heldElsewhere reads, once per removal of run r, what other system
// backups name: the runs this coordinator recorded (not failed) and the
// manifests on every target of r's configuration and of its backups (a
// later system backup's manifest may be on its default target only, its
// copy on a backup's target still pending).
func (c *Coordinator) heldElsewhere(ctx context.Context, r *Run) (*heldSet, error) {
	held := &heldSet{ids: map[string]bool{}}
	runs, err := c.st.runs()
	if err != nil {
		return nil, err
	}
	for _, o := range runs {
		if o.ID != r.ID && o.State != StateFailed {
			for _, a := range o.Acks {
				held.ids[a.BackupID] = true
			}
		}
	}
	var names []string
	for _, t := range r.Config.Targets {
		names = append(names, t.Name)
	}
	for _, a := range r.Acks {
		if !slices.Contains(names, a.Target) {
			names = append(names, a.Target)
		}
	}
	for _, name := range names {
		if err := c.withRepo(ctx, name, func(tg plugins.Target, _ *backupd.Repository) error {
			ids, err := listManifestIDs(ctx, tg)
			if err != nil {
				return err
			}
			for _, other := range ids {
				if other == r.ID {
					continue
				}
				om, err := c.loadManifestFrom(ctx, tg, name, other)
				if err != nil {
					c.log.Warn("keeping the volume backups: another system manifest does not load", "system", r.ID, "other", other, "target", name, "err", err)
					held.unsure = true
					continue
				}
				for _, v := range om.Volumes {
					held.ids[v.BackupID] = true
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("remove system backup %s: which volume backups other system backups name, on target %q: %w", r.ID, name, err)
		}
	}
	return held, nil
}

// releaseBackup deletes the volume backup a names unless held says
// another system backup names it.
func (c *Coordinator) releaseBackup(ctx context.Context, id string, a Ack, held *heldSet) error {
	if held.holds(a.BackupID) {
		return nil
	}
	return c.withRepo(ctx, a.Target, func(_ plugins.Target, repo *backupd.Repository) error {
		err := repo.DeleteHeld(ctx, a.Volume, a.BackupID)
		if err != nil && !errors.Is(err, plugins.ErrNotFound) {
			return fmt.Errorf("remove system backup %s: volume %q backup %s: %w", id, a.Volume, a.BackupID, err)
		}
		return nil
	})
}
