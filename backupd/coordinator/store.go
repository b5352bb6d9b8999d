package coordinator

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StateFile is the coordinator's bbolt file in the data directory.
const StateFile = "coordinator.db"

var (
	bucketMeta     = []byte("meta")
	bucketRuns     = []byte("runs")
	bucketAgents   = []byte("agents")
	bucketRestores = []byte("restores")
	keyToken       = []byte("token")
)

// Run states.
const (
	StateOpen       = "open"
	StateCommitting = "committing"
	StateCommitted  = "committed"
	StateFailed     = "failed"
	// StateFailing: failed while committing; the manifest copies are
	// being deleted (a restart deletes them, never commits).
	StateFailing = "failing"
	// StateRemoving: system backup rm deleted or is deleting the
	// manifests; the volume backups its acks name are being released.
	StateRemoving = "removing"
)

// Run is a system backup as the coordinator records it.
type Run struct {
	ID       string    `json:"id"`
	Token    uint64    `json:"token"`
	State    string    `json:"state"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	Config   *Config   `json:"config,omitempty"`
	// Acks are the accepted acknowledgements, by agent/volume.
	Acks map[string]Ack `json:"acks,omitempty"`
	// CopiesPending lists targets still lacking a copy of the manifest.
	CopiesPending []string `json:"copies_pending,omitempty"`
	// Released is set once a failed run's volume backups are deleted.
	Released bool `json:"released,omitempty"`
}

// namesBackup reports whether the run's acks name backup id.
func (r *Run) namesBackup(id string) bool {
	for _, a := range r.Acks {
		if a.BackupID == id {
			return true
		}
	}
	return false
}

// Ack is an agent's acknowledgement of one volume backup of a system
// backup: the system backup and token it answers, and the backup it names
// (its fields inline in JSON).
type Ack struct {
	System string `json:"system"`
	Token  uint64 `json:"token"`
	VolumeBackup
}

func ackKey(agent, volume string) string { return agent + "/" + volume }

// AgentRecord is a registered agent.
type AgentRecord struct {
	Name      string    `json:"name"`
	Addr      string    `json:"addr"`
	TokenFile string    `json:"token_file,omitempty"`
	CAFile    string    `json:"ca_file,omitempty"`
	Added     time.Time `json:"added,omitzero"` // zero for the local agent
}

// restoreRecord lists the volumes a system restore finished.
type restoreRecord struct {
	Done map[string]string `json:"done"` // agent/volume -> digest
}

// store is the coordinator's bbolt state.
type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("coordinator state %s is locked by another process (is another strata server running on this data directory?): %w", path, err)
		}
		return nil, fmt.Errorf("coordinator state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketRuns, bucketAgents, bucketRestores} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("coordinator state %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func getJSON(b *bolt.Bucket, key string, v any) (bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("coordinator state: record %q does not decode: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// open records a new run with the next fencing token in one transaction:
// the token is persisted before anything uses it.
func (s *store) open(id string, now time.Time) (*Run, error) {
	var run *Run
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, runs := tx.Bucket(bucketMeta), tx.Bucket(bucketRuns)
		var tok uint64
		if v := meta.Get(keyToken); len(v) == 8 {
			tok = binary.BigEndian.Uint64(v)
		}
		tok++
		if err := meta.Put(keyToken, binary.BigEndian.AppendUint64(nil, tok)); err != nil {
			return err
		}
		if runs.Get([]byte(id)) != nil {
			return fmt.Errorf("system backup %s exists", id)
		}
		run = &Run{ID: id, Token: tok, State: StateOpen, Started: now}
		return putJSON(runs, id, run)
	})
	return run, err
}

// update applies fn to run id in one transaction and saves it; fn's error
// aborts the transaction.
func (s *store) update(id string, fn func(r *Run) error) (*Run, error) {
	var out *Run
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRuns)
		var r Run
		ok, err := getJSON(b, id, &r)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("system backup %s: %w", id, ErrNotFound)
		}
		if err := fn(&r); err != nil {
			return err
		}
		out = &r
		return putJSON(b, id, &r)
	})
	return out, err
}

func (s *store) run(id string) (*Run, error) {
	var r Run
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketRuns), id, &r)
		if err == nil && !ok {
			err = fmt.Errorf("system backup %s: %w", id, ErrNotFound)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &r, nil
}

func (s *store) runs() ([]*Run, error) {
	var out []*Run
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRuns).ForEach(func(k, v []byte) error {
			var r Run
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("coordinator state: run %q does not decode: %w", k, err)
			}
			out = append(out, &r)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b *Run) int { return strings.Compare(a.ID, b.ID) })
	return out, err
}

// put writes run r as is (creating or replacing its record).
func (s *store) put(r *Run) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bucketRuns), r.ID, r) })
}

func (s *store) deleteRun(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRuns).Delete([]byte(id)) })
}

func (s *store) agents() ([]AgentRecord, error) {
	var out []AgentRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
			var a AgentRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("coordinator state: agent %q does not decode: %w", k, err)
			}
			out = append(out, a)
			return nil
		})
	})
	return out, err
}

func (s *store) addAgent(a AgentRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		if b.Get([]byte(a.Name)) != nil {
			return fmt.Errorf("agent %q: %w", a.Name, ErrExists)
		}
		return putJSON(b, a.Name, a)
	})
}

func (s *store) removeAgent(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("agent %q: %w", name, ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
}

func (s *store) restoreDone(id string) (map[string]string, error) {
	var r restoreRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		_, err := getJSON(tx.Bucket(bucketRestores), id, &r)
		return err
	})
	if r.Done == nil {
		r.Done = map[string]string{}
	}
	return r.Done, err
}

// clearRestore forgets a finished restore: a later run of it restores
// again (the volumes may hold other data by then).
func (s *store) clearRestore(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRestores).Delete([]byte(id)) })
}

func (s *store) markRestored(id, key, digest string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRestores)
		var r restoreRecord
		if _, err := getJSON(b, id, &r); err != nil {
			return err
		}
		if r.Done == nil {
			r.Done = map[string]string{}
		}
		r.Done[key] = digest
		return putJSON(b, id, &r)
	})
}
