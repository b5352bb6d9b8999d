package coordinator

// Fuzz targets for the coordinator's bbolt records (runs, agents,
// restores) and for Duration's JSON form.
//
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzStoreRecord$' -fuzztime 60s ./backupd/coordinator/

import (
	"bytes"
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// jsonOf is v's JSON, for comparing records whose times may carry
// different but equivalent locations.
func jsonOf(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatalf("marshal %+v: %v", v, err)
	}
	return b
}

// FuzzStoreRecord stores fuzzed bytes as the record "k" of the runs, the
// agents or the restores bucket and reads it with the store's readers.
// A record that does not decode fails every reader with an error naming
// it; one that decodes is written again with the store's encoder
// (putJSON, or update and markRestored) and reads back the same.
func FuzzStoreRecord(f *testing.F) {
	m := testManifest()
	t0 := time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC)
	run := &Run{ID: "k", Token: 7, State: StateCommitted, Started: t0, Finished: t0.Add(time.Minute), Config: &m.Config,
		Acks:          map[string]Ack{"local/vol-a": {System: m.ID, Token: 7, VolumeBackup: m.Volumes[0]}},
		CopiesPending: []string{"s3"}}
	f.Add(jsonOf(f, run), uint8(0))
	f.Add(jsonOf(f, &Run{ID: "k", Token: 1, State: StateOpen, Started: t0.In(time.FixedZone("x", -3600))}), uint8(0))
	f.Add([]byte(`{"id":"k","token":-1}`), uint8(0))
	f.Add([]byte(`{"id":"k","acks":{"a/v":{"system":"s","token":1,"backup_id":"b","size":"x"}}}`), uint8(0))
	f.Add([]byte(`{"id":"k","started":"2026-13-01T00:00:00Z"}`), uint8(0))
	f.Add(jsonOf(f, AgentRecord{Name: "k", Addr: "https://h:7443", TokenFile: "/t", CAFile: "/ca", Added: t0}), uint8(1))
	f.Add([]byte(`{"name":"k","addr":1}`), uint8(1))
	f.Add(jsonOf(f, restoreRecord{Done: map[string]string{"local/vol-a": strings.Repeat("ab", 32)}}), uint8(2))
	f.Add([]byte(`{"done":null}`), uint8(2))
	f.Add([]byte(`{"done":{"a":1}}`), uint8(2))
	f.Add([]byte(`null`), uint8(0))
	f.Add([]byte(`{} {}`), uint8(1))
	f.Add([]byte(`{`), uint8(2))
	f.Add([]byte{}, uint8(0))
	st, err := openStore(filepath.Join(f.TempDir(), StateFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.close() })
	buckets := [][]byte{bucketRuns, bucketAgents, bucketRestores}
	f.Fuzz(func(t *testing.T, raw []byte, which uint8) {
		bucket := buckets[int(which)%len(buckets)]
		put := func(fn func(b *bolt.Bucket) error) {
			t.Helper()
			if err := st.db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucket)) }); err != nil {
				t.Fatal(err)
			}
		}
		// Only "k", in one bucket.
		if err := st.db.Update(func(tx *bolt.Tx) error {
			for _, name := range buckets {
				if err := tx.DeleteBucket(name); err != nil {
					return err
				}
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			return tx.Bucket(bucket).Put([]byte("k"), raw)
		}); err != nil {
			t.Fatal(err)
		}
		decodeErr := func(err error, what string) {
			t.Helper()
			if want := "coordinator state: " + what + ` "k" does not decode: `; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q, want it to start %q", err, want)
			}
		}
		switch {
		case bytes.Equal(bucket, bucketRuns):
			r, err := st.run("k")
			all, errAll := st.runs()
			if (err == nil) != (errAll == nil) {
				t.Fatalf("run: %v, runs: %v", err, errAll)
			}
			if err != nil {
				decodeErr(err, "record")
				decodeErr(errAll, "run")
				if r != nil {
					t.Fatalf("error %v with a run", err)
				}
				return
			}
			if len(all) != 1 || !bytes.Equal(jsonOf(t, all[0]), jsonOf(t, r)) {
				t.Fatalf("run %+v, runs %+v", r, all)
			}
			want := jsonOf(t, r)
			// update (read, apply, write back) of a no-op changes nothing.
			u, err := st.update("k", func(*Run) error { return nil })
			if err != nil {
				t.Fatalf("update of a run that reads: %v", err)
			}
			again, err := st.run("k")
			if err != nil || !bytes.Equal(jsonOf(t, u), want) || !bytes.Equal(jsonOf(t, again), want) {
				t.Fatalf("run %s updated: %+v, read back %+v, %v", want, u, again, err)
			}
		case bytes.Equal(bucket, bucketAgents):
			as, err := st.agents()
			if err != nil {
				decodeErr(err, "agent")
				if as != nil {
					t.Fatalf("error %v with agents %+v", err, as)
				}
				return
			}
			if len(as) != 1 {
				t.Fatalf("%d agents from one record", len(as))
			}
			want := jsonOf(t, as[0])
			put(func(b *bolt.Bucket) error { return putJSON(b, "k", as[0]) })
			again, err := st.agents()
			if err != nil || len(again) != 1 || !bytes.Equal(jsonOf(t, again[0]), want) {
				t.Fatalf("agent %s written again reads back as %+v, %v", want, again, err)
			}
		default:
			done, err := st.restoreDone("k")
			if done == nil {
				t.Fatalf("restoreDone returned a nil map (error %v)", err)
			}
			if err != nil {
				decodeErr(err, "record")
				if err := st.markRestored("k", "x/y", "d"); err == nil {
					t.Fatal("markRestored over a record that does not decode succeeded")
				}
				return
			}
			// markRestored keeps what was done and adds one.
			key := "agent-" + strings.Repeat("z", len(done)) + "/vol"
			if err := st.markRestored("k", key, "digest"); err != nil {
				t.Fatalf("markRestored: %v", err)
			}
			again, err := st.restoreDone("k")
			if err != nil || len(again) != len(done)+1 || again[key] != "digest" {
				t.Fatalf("restore %v marked: %v, %v", done, again, err)
			}
			delete(again, key)
			if !bytes.Equal(jsonOf(t, again), jsonOf(t, done)) {
				t.Fatalf("restore %v marked changed the others: %v", done, again)
			}
		}
	})
}

func FuzzDurationUnmarshalJSON(f *testing.F) {
	for _, d := range []time.Duration{0, time.Nanosecond, 90 * time.Second, -time.Hour, 6*time.Hour + 1, math.MaxInt64, math.MinInt64} {
		b, err := Duration(d).MarshalJSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{`90`, `1.5`, `-2`, `0.000000001`, `1e-12`, `9223372036`, `-9223372036`, `"1h30m"`, `"7d"`, `"x"`, `""`,
		`true`, `null`, `{}`, `[]`, `"\u0031s"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Duration
		if err := json.Unmarshal(b, &d); err != nil {
			return
		}
		var s string
		var n float64
		switch {
		case json.Unmarshal(b, &s) == nil:
			want, err := time.ParseDuration(s)
			if err != nil || time.Duration(d) != want {
				t.Fatalf("%s read as %v, ParseDuration gives %v, %v", b, time.Duration(d), want, err)
			}
		case json.Unmarshal(b, &n) == nil:
			// A number of seconds: that many seconds, to the nanosecond
			// (float64 keeps 53 bits, so relatively 2^-52).
			want := n * float64(time.Second)
			if diff := math.Abs(float64(d) - want); diff > max(1, math.Abs(want)*0x1p-52) {
				t.Fatalf("%s seconds read as %v (%d ns), want %g ns", b, time.Duration(d), int64(d), want)
			}
		default:
			t.Fatalf("%s read as %v: neither a string nor a number", b, time.Duration(d))
		}
		// MarshalJSON writes what UnmarshalJSON reads back.
		enc, err := d.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var again Duration
		if err := json.Unmarshal(enc, &again); err != nil || again != d {
			t.Fatalf("%v written as %s reads back as %v, %v", time.Duration(d), enc, time.Duration(again), err)
		}
	})
}
