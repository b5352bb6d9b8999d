package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev/agent"
)

// client returns an API client for the agent called name: one per agent
// and address, kept for the coordinator's life so that connections are
// reused rather than piled up.
func (c *Coordinator) client(name string) (*agent.Client, error) {
	rec := AgentRecord{Name: LocalAgent, Addr: c.opts.LocalSocket}
	if name != LocalAgent {
		as, err := c.st.agents()
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(as, func(a AgentRecord) bool { return a.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("agent %q is not registered with this coordinator (strata agent add %s ADDR): %w", name, name, ErrNotFound)
		}
		rec = as[i]
	}
	key := rec.Name + "\x00" + rec.Addr + "\x00" + rec.TokenFile + "\x00" + rec.CAFile
	c.clientsMu.Lock()
	defer c.clientsMu.Unlock()
	if cl, ok := c.clients[key]; ok {
		return cl, nil
	}
	cl, err := dialAgent(rec)
	if err != nil {
		return nil, err
	}
	c.clients[key] = cl
	return cl, nil
}

func dialAgent(a AgentRecord) (*agent.Client, error) {
	cl, err := agent.Dial(a.Addr, agent.DialOptions{TokenFile: a.TokenFile, CAFile: a.CAFile})
	if err != nil {
		return nil, fmt.Errorf("agent %q at %s: %w", a.Name, a.Addr, err)
	}
	return cl, nil
}

// agentList is the local agent then the registered ones, by name.
func (c *Coordinator) agentList() ([]AgentRecord, error) {
	as, err := c.st.agents()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(as, func(a, b AgentRecord) int { return strings.Compare(a.Name, b.Name) })
	return append([]AgentRecord{{Name: LocalAgent, Addr: c.opts.LocalSocket}}, as...), nil
}

// Agents lists the agents the coordinator drives.
func (c *Coordinator) Agents() ([]AgentRecord, error) { return c.agentList() }

// AddAgent registers an agent after checking that it answers.
func (c *Coordinator) AddAgent(ctx context.Context, a AgentRecord) (AgentRecord, error) {
	if !backupd.ValidName(a.Name) {
		return AgentRecord{}, fmt.Errorf("agent name %q: must match [a-z0-9][a-z0-9._-]{0,62}: %w", a.Name, ErrInvalid)
	}
	if a.Name == LocalAgent {
		return AgentRecord{}, fmt.Errorf("agent name %q is the coordinator's own agent: %w", a.Name, ErrInvalid)
	}
	if a.Addr == "" {
		return AgentRecord{}, fmt.Errorf("agent %q: no address: %w", a.Name, ErrInvalid)
	}
	cl, err := dialAgent(a)
	if err != nil {
		return AgentRecord{}, fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cl.Status(sctx); err != nil {
		return AgentRecord{}, fmt.Errorf("agent %q at %s does not answer: %v: %w", a.Name, a.Addr, err, ErrInvalid)
	}
	a.Added = time.Now().UTC()
	if err := c.st.addAgent(a); err != nil {
		return AgentRecord{}, err
	}
	c.log.Info("agent added", "agent", a.Name, "addr", a.Addr)
	return a, nil
}

// RemoveAgent unregisters an agent.
func (c *Coordinator) RemoveAgent(name string) error {
	if err := c.st.removeAgent(name); err != nil {
		return err
	}
	c.log.Info("agent removed", "agent", name)
	return nil
}

// capture reads the configuration: the registry's targets, every agent's
// volumes with their target settings resolved. Every target a volume uses
// must be registered with the coordinator.
func (c *Coordinator) capture(ctx context.Context, opts BackupOptions) (*Config, error) {
	cfg := &Config{Settings: Settings{Policy: opts.Policy, ConsistencyGroup: opts.ConsistencyGroup}}
	reg := c.opts.Targets.Registry()
	def, err := reg.Default()
	if err != nil {
		return nil, err
	}
	for _, t := range reg.List() {
		cfg.Targets = append(cfg.Targets, TargetConfig{Name: t.Name, URL: t.URL, Kind: t.Kind, Default: t.Default})
	}
	as, err := c.agentList()
	if err != nil {
		return nil, err
	}
	for _, a := range as {
		cl, err := c.client(a.Name)
		if err != nil {
			return nil, err
		}
		vs, err := cl.Volumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent %q: list volumes: %w", a.Name, err)
		}
		cfg.Agents = append(cfg.Agents, AgentConfig{Name: a.Name, Addr: a.Addr})
		for _, v := range vs {
			if v.Err != "" {
				return nil, fmt.Errorf("agent %q: volume %q does not open: %s", a.Name, v.Name, v.Err)
			}
			vc := VolumeConfig{Agent: a.Name, Name: v.Name, Size: v.Size, TargetSetting: v.Target, Target: v.Target}
			if vc.Target == "" {
				vc.Target = def.Name
			}
			// A target keeps one backup history per volume name: two
			// agents' volumes of one name there would share it (and
			// each other's incremental parents).
			if i := slices.IndexFunc(cfg.Volumes, func(o VolumeConfig) bool { return o.Name == vc.Name && o.Target == vc.Target }); i >= 0 {
				return nil, fmt.Errorf("volume %q exists on agents %q and %q and both back up to target %q: set another target for one of them (strata volume set %s --target ...): %w",
					vc.Name, cfg.Volumes[i].Agent, a.Name, vc.Target, vc.Name, ErrInvalid)
			}
			if _, ok := cfg.target(vc.Target); !ok {
				return nil, fmt.Errorf("volume %q of agent %q uses target %q, which the coordinator does not know (strata target add %s URL): %w", v.Name, a.Name, vc.Target, vc.Target, ErrNotFound)
			}
			cfg.Volumes = append(cfg.Volumes, vc)
		}
	}
	return cfg, nil
}

// holdResponse is the answer of POST /v1/holds.
type holdResponse struct {
	ID string `json:"id"`
}

// groupSnapshot takes snapshot snap of every volume at one instant:
// writes held on every agent, then every agent snapshots its volumes,
// then every hold is released (also on failure; holds expire by
// themselves should the coordinator die meanwhile).
func (c *Coordinator) groupSnapshot(ctx context.Context, cfg *Config, snap string) error {
	byAgent := map[string][]string{}
	for _, v := range cfg.Volumes {
		byAgent[v.Agent] = append(byAgent[v.Agent], v.Name)
	}
	type held struct {
		cl *agent.Client
		id string
	}
	var holds []held
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, h := range holds {
			if err := h.cl.Do(rctx, http.MethodDelete, "/v1/holds/"+h.id, nil, nil); err != nil {
				c.log.Warn("release a write hold (it expires by itself)", "hold", h.id, "err", err)
			}
		}
	}()
	for _, a := range cfg.Agents {
		vols := byAgent[a.Name]
		if len(vols) == 0 {
			continue
		}
		cl, err := c.client(a.Name)
		if err != nil {
			return err
		}
		var hr holdResponse
		if err := cl.Do(ctx, http.MethodPost, "/v1/holds", map[string]any{"volumes": vols, "timeout_ms": 30000}, &hr); err != nil {
			return fmt.Errorf("agent %q: hold writes: %w", a.Name, err)
		}
		holds = append(holds, held{cl, hr.ID})
	}
	for _, h := range holds {
		if err := h.cl.Do(ctx, http.MethodPost, "/v1/holds/"+h.id+"/snapshots", map[string]string{"name": snap}, nil); err != nil {
			return fmt.Errorf("agent at %s: snapshot held volumes: %w", h.cl.Addr(), err)
		}
	}
	return nil
}
