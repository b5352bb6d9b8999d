package service

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
)

func TestStreamEvents(t *testing.T) {
	t.Parallel()
	answers := map[string]string{
		"/done":      `{"event":"progress","op":"backup","bytes_total":10}` + "\n" + `{"event":"done","backup":{"id":"b1","volume":"v","tags":{"k":"v"},"reused":true}}` + "\n",
		"/accepted":  `{"event":"accepted","snapshot":"s1"}` + "\n",
		"/error":     `{"event":"progress"}` + "\n" + `{"event":"error","error":"volume \"v\": not found","code":"not_found"}` + "\n",
		"/truncated": `{"event":"progress"}` + "\n",
		"/garbage":   "{not json\n",
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{what}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, answers["/"+r.PathValue("what")])
	})
	mux.HandleFunc("POST /v1/backups", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, answers["/done"])
	})
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c := agent.NewClient(sock)

	for _, tc := range []struct {
		path   string
		event  string
		events int
		errIs  error
		errHas string
	}{
		{path: "/done", event: "done", events: 2},
		{path: "/accepted", event: "accepted", events: 1},
		{path: "/error", events: 2, errIs: blockdev.ErrNotFound, errHas: "not found"},
		{path: "/truncated", events: 1, errHas: "ended before the operation finished"},
		{path: "/garbage", errHas: "decode event"},
	} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			t.Parallel()
			n := 0
			ev, err := StreamEvents(t.Context(), c, tc.path, CreateRequest{Volume: "v"}, func(*Event, []byte) error { n++; return nil })
			if n != tc.events {
				t.Errorf("fn saw %d events, want %d", n, tc.events)
			}
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) || (tc.errIs != nil && !errors.Is(err, tc.errIs)) {
					t.Fatalf("err %v, want one mentioning %q matching %v", err, tc.errHas, tc.errIs)
				}
				return
			}
			if err != nil || ev.Event != tc.event {
				t.Fatalf("StreamEvents = %+v, %v; want event %q", ev, err, tc.event)
			}
		})
	}

	progress := 0
	b, err := CreateBackup(t.Context(), c, CreateRequest{Volume: "v"}, func(Event) { progress++ })
	if err != nil || b.ID != "b1" || progress != 1 {
		t.Fatalf("CreateBackup = %+v, %v after %d progress events; want backup b1 after 1", b, err, progress)
	}
}
