package targettest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/strata-block/strata/plugins"
)

const (
	mib = 1 << 20
	// ListKeys is how many keys the List case writes.
	ListKeys = 10000
	// Writers is how many goroutines the concurrency cases run.
	Writers = 16
)

// Run runs the conformance suite. open returns a fresh, empty target for
// each case (its own directory, bucket prefix or plugin process); the
// cases run in parallel and close what open returned, so open should also
// register any cleanup of its own with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) plugins.Target) {
	cases := []struct {
		name string
		fn   func(t *testing.T, tg plugins.Target)
	}{
		{"Info", testInfo},
		{"PutGetSizes", testPutGetSizes},
		{"RangedGet", testRangedGet},
		{"NotFound", testNotFound},
		{"OverwriteAndIdempotence", testOverwrite},
		{"FailedPutStoresNothing", testFailedPut},
		{"ConcurrentPuts", testConcurrentPuts},
		{"PutIfAbsent", testPutIfAbsent},
		{"PutIfAbsentRace", testPutIfAbsentRace},
		{"HasBatched", testHas},
		{"List", testList},
		{"DeleteBatched", testDelete},
		{"HostileKeys", testHostileKeys},
		{"Close", testClose},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tg := open(t)
			t.Cleanup(func() { _ = tg.Close() })
			c.fn(t, tg)
		})
	}
}

// Data returns n deterministic pseudo-random bytes for seed.
func Data(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, tg plugins.Target, key string, data []byte) {
	t.Helper()
	if err := tg.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

// get reads a whole range, failing the test on error.
func get(t *testing.T, tg plugins.Target, key string, offset, length int64) []byte {
	t.Helper()
	b, err := read(t.Context(), tg, key, offset, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", key, offset, length, err)
	}
	return b
}

func read(ctx context.Context, tg plugins.Target, key string, offset, length int64) ([]byte, error) {
	rc, n, err := tg.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if int64(len(b)) != n {
		return nil, fmt.Errorf("Get announced %d bytes and yielded %d", n, len(b))
	}
	return b, nil
}

func checkContent(t *testing.T, tg plugins.Target, key string, want []byte) {
	t.Helper()
	got := get(t, tg, key, 0, -1)
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %d bytes (sha256 %x), want %d bytes (sha256 %x)", key, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// listAll lists every key under prefix.
func listAll(t *testing.T, tg plugins.Target, prefix, startAfter string) []plugins.ObjectInfo {
	t.Helper()
	var out []plugins.ObjectInfo
	for o, err := range tg.List(t.Context(), prefix, startAfter) {
		if err != nil {
			t.Fatalf("List(%q, %q): %v", prefix, startAfter, err)
		}
		out = append(out, o)
	}
	return out
}

func keysOf(objs []plugins.ObjectInfo) []string {
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	return keys
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want one wrapping %v", what, err, want)
	}
}

func testInfo(t *testing.T, tg plugins.Target) {
	info, err := tg.Info(t.Context())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.Kind == "" || info.MaxBatch <= 0 || info.MaxObjectSize < 64*mib || info.ConditionalCreate == plugins.ConditionalCreateUnknown {
		t.Fatalf("Info = %+v: want a kind, a positive batch size, objects of 64 MiB at least and a conditional-create mode", info)
	}
}

func testPutGetSizes(t *testing.T, tg plugins.Target) {
	for i, size := range []int{0, 1, mib + 1, 64 * mib} {
		key := fmt.Sprintf("sizes/obj-%d", size)
		data := Data(uint64(i), size)
		put(t, tg, key, data)
		checkContent(t, tg, key, data)
		has, err := tg.Has(t.Context(), []string{key})
		if err != nil || !has[0] {
			t.Fatalf("Has(%q) = %v, %v after Put", key, has, err)
		}
	}
	objs := listAll(t, tg, "sizes/", "")
	want := []plugins.ObjectInfo{{Key: "sizes/obj-0", Size: 0}, {Key: "sizes/obj-1", Size: 1}, {Key: "sizes/obj-1048577", Size: mib + 1}, {Key: "sizes/obj-67108864", Size: 64 * mib}}
	if !slices.Equal(objs, want) {
		t.Fatalf("List(sizes/) = %v, want %v", objs, want)
	}
}

func testRangedGet(t *testing.T, tg plugins.Target) {
	const size = 3*mib + 5
	data := Data(7, size)
	put(t, tg, "range/obj", data)
	put(t, tg, "range/empty", nil)
	tests := []struct {
		name           string
		key            string
		offset, length int64
		want           []byte
		err            error
	}{
		{name: "whole", key: "range/obj", offset: 0, length: -1, want: data},
		{name: "empty range", key: "range/obj", offset: 10, length: 0, want: []byte{}},
		{name: "head", key: "range/obj", offset: 0, length: 10, want: data[:10]},
		{name: "middle across chunks", key: "range/obj", offset: mib - 3, length: mib + 7, want: data[mib-3 : 2*mib+4]},
		{name: "tail to end", key: "range/obj", offset: size - 1, length: -1, want: data[size-1:]},
		{name: "clipped", key: "range/obj", offset: size - 10, length: 100, want: data[size-10:]},
		{name: "at end", key: "range/obj", offset: size, length: -1, want: []byte{}},
		{name: "past end", key: "range/obj", offset: size + 1, length: -1, err: plugins.ErrInvalidRange},
		{name: "negative offset", key: "range/obj", offset: -1, length: 5, err: plugins.ErrInvalidRange},
		{name: "empty object", key: "range/empty", offset: 0, length: -1, want: []byte{}},
		{name: "empty object at end", key: "range/empty", offset: 0, length: 5, want: []byte{}},
		{name: "empty object past end", key: "range/empty", offset: 1, length: -1, err: plugins.ErrInvalidRange},
		{name: "missing", key: "range/missing", offset: 5, length: 5, err: plugins.ErrNotFound},
	}
	for _, tt := range tests {
		got, err := read(t.Context(), tg, tt.key, tt.offset, tt.length)
		if tt.err != nil {
			wantErr(t, tt.name, err, tt.err)
			continue
		}
		if err != nil {
			t.Fatalf("%s: Get(%q, %d, %d): %v", tt.name, tt.key, tt.offset, tt.length, err)
		}
		if !bytes.Equal(got, tt.want) {
			t.Fatalf("%s: Get(%q, %d, %d) = %d bytes, want %d", tt.name, tt.key, tt.offset, tt.length, len(got), len(tt.want))
		}
	}
}

func testNotFound(t *testing.T, tg plugins.Target) {
	_, _, err := tg.Get(t.Context(), "nf/missing", 0, -1)
	wantErr(t, "Get of a missing key", err, plugins.ErrNotFound)
	if c := plugins.Classify(err); c != plugins.ClassNotFound {
		t.Fatalf("Classify(%v) = %v, want not-found", err, c)
	}
	has, err := tg.Has(t.Context(), []string{"nf/missing"})
	if err != nil || has[0] {
		t.Fatalf("Has(missing) = %v, %v; want [false], nil", has, err)
	}
	if objs := listAll(t, tg, "nf/", ""); len(objs) != 0 {
		t.Fatalf("List(nf/) = %v on an empty target", objs)
	}
}

func testOverwrite(t *testing.T, tg plugins.Target) {
	a, b := Data(1, 1000), Data(2, 2000)
	put(t, tg, "ow/k", a)
	put(t, tg, "ow/k", a)
	checkContent(t, tg, "ow/k", a)
	put(t, tg, "ow/k", b)
	checkContent(t, tg, "ow/k", b)
	if objs := listAll(t, tg, "ow/", ""); !slices.Equal(objs, []plugins.ObjectInfo{{Key: "ow/k", Size: 2000}}) {
		t.Fatalf("List(ow/) = %v, want one object of 2000 bytes", objs)
	}
}

// failingReader yields n bytes of data and then fails.
type failingReader struct {
	data []byte
	n    int
}

var errInjected = errors.New("injected reader failure")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errInjected
	}
	m := copy(p[:min(len(p), f.n)], f.data)
	f.data, f.n = f.data[m:], f.n-m
	return m, nil
}

func testFailedPut(t *testing.T, tg plugins.Target) {
	old := Data(3, 5000)
	put(t, tg, "fail/existing", old)
	data := Data(4, 3*mib)
	tests := []struct {
		name string
		key  string
		r    io.Reader
		size int64
	}{
		{name: "reader fails, new key", key: "fail/new", r: &failingReader{data: data, n: 2 * mib}, size: int64(len(data))},
		{name: "reader fails, existing key", key: "fail/existing", r: &failingReader{data: data, n: 2 * mib}, size: int64(len(data))},
		{name: "reader short", key: "fail/short", r: bytes.NewReader(data[:mib]), size: int64(len(data))},
		{name: "reader long", key: "fail/long", r: bytes.NewReader(data), size: mib},
	}
	for _, tt := range tests {
		if err := tg.Put(t.Context(), tt.key, tt.r, tt.size); err == nil {
			t.Fatalf("%s: Put succeeded", tt.name)
		}
	}
	checkContent(t, tg, "fail/existing", old)
	if objs := listAll(t, tg, "fail/", ""); !slices.Equal(keysOf(objs), []string{"fail/existing"}) {
		t.Fatalf("after failed puts, List(fail/) = %v, want only fail/existing", objs)
	}
	has, err := tg.Has(t.Context(), []string{"fail/new", "fail/short", "fail/long"})
	if err != nil || slices.Contains(has, true) {
		t.Fatalf("after failed puts, Has = %v, %v; want all false", has, err)
	}
	// A cancelled context stores nothing either.
	ctx, cancel := context.WithCancel(t.Context())
	r := &cancellingReader{data: data, at: mib, cancel: cancel}
	if err := tg.Put(ctx, "fail/cancelled", r, int64(len(data))); err == nil {
		t.Fatalf("Put with a context cancelled mid-way succeeded")
	}
	if _, _, err := tg.Get(t.Context(), "fail/cancelled", 0, -1); !errors.Is(err, plugins.ErrNotFound) {
		t.Fatalf("Get after a cancelled Put: %v, want not found", err)
	}
}

// cancellingReader cancels a context after at bytes and goes on reading.
type cancellingReader struct {
	data   []byte
	off    int
	at     int
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if c.off >= c.at {
		c.cancel()
	}
	if c.off == len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.off:])
	c.off += n
	return n, nil
}

func testConcurrentPuts(t *testing.T, tg plugins.Target) {
	var wg sync.WaitGroup
	errs := make([]error, 2*Writers)
	contents := make([][]byte, Writers)
	for i := range Writers {
		contents[i] = Data(uint64(100+i), mib+i)
	}
	for i := range Writers {
		wg.Go(func() {
			key := fmt.Sprintf("conc/own-%02d", i)
			errs[i] = tg.Put(t.Context(), key, bytes.NewReader(contents[i]), int64(len(contents[i])))
		})
		wg.Go(func() {
			errs[Writers+i] = tg.Put(t.Context(), "conc/shared", bytes.NewReader(contents[i]), int64(len(contents[i])))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Puts: %v", err)
	}
	for i := range Writers {
		checkContent(t, tg, fmt.Sprintf("conc/own-%02d", i), contents[i])
	}
	// The shared key holds exactly one writer's object, never a mix.
	got := get(t, tg, "conc/shared", 0, -1)
	if !slices.ContainsFunc(contents, func(c []byte) bool { return bytes.Equal(c, got) }) {
		t.Fatalf("conc/shared holds %d bytes that no single writer put", len(got))
	}
	if n := len(listAll(t, tg, "conc/", "")); n != Writers+1 {
		t.Fatalf("List(conc/) shows %d objects, want %d", n, Writers+1)
	}
}

// conditional returns whether the target promises atomic conditional
// create; a target that offers none must say ErrUnsupported.
func conditional(t *testing.T, tg plugins.Target) bool {
	t.Helper()
	info, err := tg.Info(t.Context())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	switch info.ConditionalCreate {
	case plugins.ConditionalCreateAtomic:
		return true
	case plugins.ConditionalCreateNone:
		err := tg.PutIfAbsent(t.Context(), "cc/probe", bytes.NewReader(nil), 0)
		wantErr(t, "PutIfAbsent on a target without conditional create", err, plugins.ErrUnsupported)
	}
	return false
}

func testPutIfAbsent(t *testing.T, tg plugins.Target) {
	if !conditional(t, tg) {
		t.Skip("the target reports no atomic conditional create")
	}
	a, b := Data(10, 300), Data(11, 400)
	if err := tg.PutIfAbsent(t.Context(), "pia/k", bytes.NewReader(a), int64(len(a))); err != nil {
		t.Fatalf("PutIfAbsent on a free key: %v", err)
	}
	err := tg.PutIfAbsent(t.Context(), "pia/k", bytes.NewReader(b), int64(len(b)))
	wantErr(t, "PutIfAbsent on a taken key", err, plugins.ErrAlreadyExists)
	if c := plugins.Classify(err); c != plugins.ClassAlreadyExists {
		t.Fatalf("Classify(%v) = %v", err, c)
	}
	checkContent(t, tg, "pia/k", a)
	// Empty objects, and a key freed by Delete, work too.
	if err := tg.PutIfAbsent(t.Context(), "pia/empty", bytes.NewReader(nil), 0); err != nil {
		t.Fatalf("PutIfAbsent of an empty object: %v", err)
	}
	if err := tg.Delete(t.Context(), []string{"pia/k"}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := tg.PutIfAbsent(t.Context(), "pia/k", bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatalf("PutIfAbsent after Delete: %v", err)
	}
	checkContent(t, tg, "pia/k", b)
	// A failed conditional put leaves the key free.
	if err := tg.PutIfAbsent(t.Context(), "pia/failed", &failingReader{data: a, n: 100}, int64(len(a))); err == nil {
		t.Fatalf("PutIfAbsent with a failing reader succeeded")
	}
	if err := tg.PutIfAbsent(t.Context(), "pia/failed", bytes.NewReader(a), int64(len(a))); err != nil {
		t.Fatalf("PutIfAbsent after a failed one: %v", err)
	}
	if keys := keysOf(listAll(t, tg, "pia/", "")); !slices.Equal(keys, []string{"pia/empty", "pia/failed", "pia/k"}) {
		t.Fatalf("List(pia/) = %v", keys)
	}
}

func testPutIfAbsentRace(t *testing.T, tg plugins.Target) {
	if !conditional(t, tg) {
		t.Skip("the target reports no atomic conditional create")
	}
	for round := range 3 {
		key := fmt.Sprintf("race/lock-%d", round)
		contents := make([][]byte, Writers)
		errs := make([]error, Writers)
		for i := range Writers {
			contents[i] = Data(uint64(1000*round+i), 64<<10+i)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range Writers {
			wg.Go(func() {
				<-start
				errs[i] = tg.PutIfAbsent(t.Context(), key, bytes.NewReader(contents[i]), int64(len(contents[i])))
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: creators %d and %d both won", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, plugins.ErrAlreadyExists):
				t.Fatalf("round %d: creator %d: %v, want success or already exists", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no creator won", round)
		}
		checkContent(t, tg, key, contents[winner])
	}
}

func testHas(t *testing.T, tg plugins.Target) {
	info, err := tg.Info(t.Context())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	n := info.MaxBatch
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("has/k%04d", i)
		if i%3 == 0 {
			put(t, tg, keys[i], []byte{byte(i)})
		}
	}
	has, err := tg.Has(t.Context(), keys)
	if err != nil {
		t.Fatalf("Has(%d keys): %v", n, err)
	}
	if len(has) != n {
		t.Fatalf("Has(%d keys) answered %d", n, len(has))
	}
	for i, h := range has {
		if h != (i%3 == 0) {
			t.Fatalf("Has(%q) = %v", keys[i], h)
		}
	}
	if has, err := tg.Has(t.Context(), nil); err != nil || len(has) != 0 {
		t.Fatalf("Has(no keys) = %v, %v", has, err)
	}
}

func testList(t *testing.T, tg plugins.Target) {
	keys := make([]string, ListKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("list/k%05d", i)
	}
	// Keys outside the prefix, and keys whose order differs from a
	// directory walk's ("-" < "/" < "0").
	extra := []string{"lis", "listx/a", "list-a", "list/a-b", "list/a/b", "list/a/c/d", "list/a0"}
	var wg sync.WaitGroup
	errs := make([]error, Writers)
	for w := range Writers {
		wg.Go(func() {
			for i := w; i < len(keys); i += Writers {
				if err := tg.Put(t.Context(), keys[i], strings.NewReader(keys[i]), int64(len(keys[i]))); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("writing %d keys: %v", len(keys), err)
	}
	for _, k := range extra {
		put(t, tg, k, []byte(k))
	}
	want := append([]string{"list/a-b", "list/a/b", "list/a/c/d", "list/a0"}, keys...)
	slices.Sort(want)
	objs := listAll(t, tg, "list/", "")
	if got := keysOf(objs); !slices.Equal(got, want) {
		t.Fatalf("List(list/) gave %d keys (first %v), want %d in byte order", len(got), got[:min(5, len(got))], len(want))
	}
	for _, o := range objs {
		if o.Size != int64(len(o.Key)) {
			t.Fatalf("List: %q has size %d, want %d", o.Key, o.Size, len(o.Key))
		}
	}
	tests := []struct {
		prefix, after string
		want          []string
	}{
		{prefix: "list/k0999", want: []string{"list/k09990", "list/k09991", "list/k09992", "list/k09993", "list/k09994", "list/k09995", "list/k09996", "list/k09997", "list/k09998", "list/k09999"}},
		{prefix: "list/k0999", after: "list/k09997", want: []string{"list/k09998", "list/k09999"}},
		{prefix: "list/a", want: []string{"list/a-b", "list/a/b", "list/a/c/d", "list/a0"}},
		{prefix: "list/a/", want: []string{"list/a/b", "list/a/c/d"}},
		{prefix: "list/a/", after: "list/a/b", want: []string{"list/a/c/d"}},
		{prefix: "lis", after: "list/k00000", want: append(append([]string{}, keys[1:]...), "listx/a")},
		{prefix: "nothing/", want: nil},
	}
	for _, tt := range tests {
		if got := keysOf(listAll(t, tg, tt.prefix, tt.after)); !slices.Equal(got, tt.want) {
			t.Fatalf("List(%q, after %q) = %d keys %v..., want %d", tt.prefix, tt.after, len(got), got[:min(3, len(got))], len(tt.want))
		}
	}
	// Breaking out of the loop early is fine and stops the listing.
	n := 0
	for _, err := range tg.List(t.Context(), "list/", "") {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if n++; n == 3 {
			break
		}
	}
	all := keysOf(listAll(t, tg, "", ""))
	if len(all) != len(keys)+len(extra) || !slices.IsSorted(all) {
		t.Fatalf("List(\"\") = %d keys (sorted %v), want %d sorted", len(all), slices.IsSorted(all), len(keys)+len(extra))
	}
}

func testDelete(t *testing.T, tg plugins.Target) {
	info, err := tg.Info(t.Context())
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	var keys []string
	for i := range 50 {
		k := fmt.Sprintf("del/d/k%02d", i)
		keys = append(keys, k)
		put(t, tg, k, []byte(k))
	}
	// Missing keys are not an error; a full batch is accepted.
	batch := append([]string{}, keys[:25]...)
	for i := len(batch); i < info.MaxBatch; i++ {
		batch = append(batch, fmt.Sprintf("del/missing/m%04d", i))
	}
	if err := tg.Delete(t.Context(), batch); err != nil {
		t.Fatalf("Delete(%d keys): %v", len(batch), err)
	}
	if err := tg.Delete(t.Context(), batch[:5]); err != nil {
		t.Fatalf("Delete of deleted keys: %v", err)
	}
	if err := tg.Delete(t.Context(), nil); err != nil {
		t.Fatalf("Delete(no keys): %v", err)
	}
	if got := keysOf(listAll(t, tg, "del/", "")); !slices.Equal(got, keys[25:]) {
		t.Fatalf("after Delete, List(del/) = %v, want %v", got, keys[25:])
	}
	has, err := tg.Has(t.Context(), keys)
	if err != nil {
		t.Fatalf("Has: %v", err)
	}
	for i, h := range has {
		if h != (i >= 25) {
			t.Fatalf("after Delete, Has(%q) = %v", keys[i], h)
		}
	}
	if _, _, err := tg.Get(t.Context(), keys[0], 0, -1); !errors.Is(err, plugins.ErrNotFound) {
		t.Fatalf("Get of a deleted key: %v, want not found", err)
	}
}

// HostileKeys are keys every target must reject with ErrInvalidKey.
var HostileKeys = []string{
	"", "/abs", "/", "../x", "a/../b", "..", ".", "a/./b", "a//b", "a/", "nul\x00byte",
	"ctl\x01", "tab\tkey", "new\nline", ".hidden", "a/.hidden", `back\slash`, "sp ace", "ü",
	"a?b", "a*b", strings.Repeat("k", plugins.MaxKeyLength+1), strings.Repeat("s", plugins.MaxSegmentLength+1),
}

func testHostileKeys(t *testing.T, tg plugins.Target) {
	ctx := t.Context()
	for _, k := range HostileKeys {
		q := fmt.Sprintf("%.40q", k)
		wantErr(t, "Put "+q, tg.Put(ctx, k, strings.NewReader("x"), 1), plugins.ErrInvalidKey)
		wantErr(t, "PutIfAbsent "+q, tg.PutIfAbsent(ctx, k, strings.NewReader("x"), 1), plugins.ErrInvalidKey)
		_, _, err := tg.Get(ctx, k, 0, -1)
		wantErr(t, "Get "+q, err, plugins.ErrInvalidKey)
		_, err = tg.Has(ctx, []string{"fine", k})
		wantErr(t, "Has "+q, err, plugins.ErrInvalidKey)
		wantErr(t, "Delete "+q, tg.Delete(ctx, []string{"fine", k}), plugins.ErrInvalidKey)
		if plugins.ValidatePrefix(k) == nil {
			continue // "" and "a/" select keys; they are fine prefixes
		}
		var listErr error
		for _, err := range tg.List(ctx, k, "") {
			listErr = err
			break
		}
		wantErr(t, "List "+q, listErr, plugins.ErrInvalidKey)
	}
	if objs := listAll(t, tg, "", ""); len(objs) != 0 {
		t.Fatalf("after hostile keys, the target lists %v", objs)
	}
}

func testClose(t *testing.T, tg plugins.Target) {
	put(t, tg, "close/k", []byte("x"))
	if err := tg.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := tg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := tg.Has(t.Context(), []string{"close/k"}); err == nil {
		t.Fatalf("Has after Close succeeded")
	}
}
