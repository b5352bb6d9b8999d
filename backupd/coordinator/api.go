package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/strata-block/strata/blockdev/agent"
)

// BackupRequest is the body of POST /v1/system/backups.
type BackupRequest struct {
	BackupOptions
	// Wait false answers {"event":"accepted"} at once and runs on,
	// detached from the request.
	Wait *bool `json:"wait,omitempty"`
}

// RestoreRequest is the body of POST /v1/system/restore.
type RestoreRequest struct {
	RestoreOptions
	Wait *bool `json:"wait,omitempty"`
}

// AddAgentRequest is the body of POST /v1/agents.
type AddAgentRequest struct {
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	TokenFile string `json:"token_file,omitempty"`
	CAFile    string `json:"ca_file,omitempty"`
}

// Routes adds the coordinator's routes to mux (it is an agent Extension):
//
//	POST   /v1/system/backups        run a system backup (NDJSON events)
//	GET    /v1/system/backups        list system backups
//	GET    /v1/system/backups/{id}   one system backup
//	DELETE /v1/system/backups/{id}   remove a system backup
//	POST   /v1/system/restore        restore a system backup (NDJSON events)
//	POST   /v1/system/acks           submit an acknowledgement (Accept)
//	GET    /v1/agents                list agents
//	POST   /v1/agents                register an agent
//	DELETE /v1/agents/{name}         unregister an agent
func (c *Coordinator) Routes(mux *http.ServeMux, writeErr func(http.ResponseWriter, error), writeJSON func(http.ResponseWriter, int, any)) {
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil && err != io.EOF {
			writeErr(w, fmt.Errorf("request body: %v: %w", err, ErrInvalid))
			return false
		}
		return true
	}
	mux.HandleFunc("POST /v1/system/backups", func(w http.ResponseWriter, r *http.Request) {
		var req BackupRequest
		if !decode(w, r, &req) {
			return
		}
		c.stream(w, r, req.Wait, func(ctx context.Context, emit func(Event)) (Event, error) {
			s, err := c.Backup(ctx, req.BackupOptions, emit)
			return Event{Event: "done", System: s}, err
		})
	})
	mux.HandleFunc("GET /v1/system/backups", func(w http.ResponseWriter, r *http.Request) {
		ss, err := c.List(r.Context())
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ss)
	})
	mux.HandleFunc("GET /v1/system/backups/{id}", func(w http.ResponseWriter, r *http.Request) {
		s, err := c.Info(r.Context(), r.PathValue("id"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("DELETE /v1/system/backups/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Remove(r.Context(), r.PathValue("id")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/system/restore", func(w http.ResponseWriter, r *http.Request) {
		var req RestoreRequest
		if !decode(w, r, &req) {
			return
		}
		c.stream(w, r, req.Wait, func(ctx context.Context, emit func(Event)) (Event, error) {
			rep, err := c.Restore(ctx, req.RestoreOptions, emit)
			return Event{Event: "done", Restore: rep}, err
		})
	})
	mux.HandleFunc("POST /v1/system/acks", func(w http.ResponseWriter, r *http.Request) {
		var ack Ack
		if !decode(w, r, &ack) {
			return
		}
		if err := c.Accept(r.Context(), ack); err != nil {
			c.log.Warn("acknowledgement refused", "system", ack.System, "token", ack.Token, "volume", ack.Volume, "err", err)
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/agents", func(w http.ResponseWriter, r *http.Request) {
		as, err := c.Agents()
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, as)
	})
	mux.HandleFunc("POST /v1/agents", func(w http.ResponseWriter, r *http.Request) {
		var req AddAgentRequest
		if !decode(w, r, &req) {
			return
		}
		a, err := c.AddAgent(r.Context(), AgentRecord{Name: req.Name, Addr: req.Addr, TokenFile: req.TokenFile, CAFile: req.CAFile})
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, a)
	})
	mux.HandleFunc("DELETE /v1/agents/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := c.RemoveAgent(r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// errorCode names an error for an NDJSON error event, as the agent's API
// does (the coordinator's errors wrap the blockdev sentinels).
func errorCode(err error) string {
	_, code := agent.ErrorCode(err)
	return code
}

// stream answers NDJSON: the operation's events (progress at most about
// five a second), then its final event or an error event. With wait
// false it answers the first event ("accepted") and lets the operation
// run on, bounded by the coordinator's lifetime.
func (c *Coordinator) stream(w http.ResponseWriter, r *http.Request, wait *bool, op func(ctx context.Context, emit func(Event)) (Event, error)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	var (
		mu       sync.Mutex
		enc      = json.NewEncoder(w)
		detached bool
		last     time.Time
		accepted = make(chan struct{})
		once     sync.Once
	)
	write := func(ev Event) {
		if ev.Event == "progress" {
			// A slow reader loses progress events rather than stalling
			// the operation that emits them.
			if !mu.TryLock() {
				return
			}
		} else {
			mu.Lock()
		}
		defer mu.Unlock()
		if detached {
			return
		}
		if ev.Event == "progress" {
			if time.Since(last) < 200*time.Millisecond {
				return
			}
			last = time.Now()
		}
		_ = enc.Encode(ev)
		if fl != nil {
			fl.Flush()
		}
	}
	if wait != nil && !*wait {
		c.jobs.Add(1)
		go func() {
			defer c.jobs.Done()
			_, err := op(c.ctx, func(ev Event) {
				if ev.Event == "accepted" {
					write(ev)
					once.Do(func() { close(accepted) })
				}
			})
			if err != nil {
				c.log.Warn("detached system operation failed", "err", err)
			}
			once.Do(func() {
				write(Event{Event: "error", Error: errString(err), Code: errorCode(err)})
				close(accepted)
			})
		}()
		select {
		case <-accepted:
		case <-r.Context().Done():
		}
		mu.Lock()
		detached = true
		mu.Unlock()
		return
	}
	final, err := op(r.Context(), write)
	if err != nil {
		ev := Event{Event: "error", Error: err.Error(), Code: errorCode(err)}
		ev.Restore = final.Restore // a partial restore still reports per volume
		write(ev)
		return
	}
	write(final)
}

func errString(err error) string {
	if err == nil {
		return "the operation ended before it was accepted"
	}
	return err.Error()
}
