package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from size classes of a power of two, 4 KiB to
// MaxPayload, plus replyHeadroom, each a sync.Pool of *[]byte (a bare
// slice would allocate on every Put). The headroom in front of the data
// lets a read reply carry its header in the same buffer, so a reply is a
// single write with no copy; it is part of every class so that a read of
// a power-of-two length fits the class of that length, not the next one
// up (which would double the memory a read pins, and the pools keep).
const (
	// replyHeadroom fits a structured OFFSET_DATA chunk header (20 bytes
	// plus the 8-byte offset) or a simple reply header (16 bytes).
	replyHeadroom = 32
	minClassShift = 12
	maxClassShift = 25 // MaxPayload
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

// sizeClass returns the pool index for a buffer of n bytes.
func sizeClass(n int) int {
	n -= replyHeadroom
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// classCap is the capacity of the buffers of class c.
func classCap(c int) int { return 1<<(c+minClassShift) + replyHeadroom }

// bufCharge is what a buffer of n bytes from getBuf holds: the capacity
// of its class (up to twice n), which is what the in-flight budget must
// count.
func bufCharge(n int) int64 {
	if c := sizeClass(n); c < len(bufPools) {
		return int64(classCap(c))
	}
	return int64(n)
}

// getBuf returns a buffer of length n (contents undefined) from its size
// class. Callers return it with putBuf.
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if c >= len(bufPools) {
		b := make([]byte, n)
		return &b
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, classCap(c))
	return &b
}

// putBuf returns a buffer obtained from getBuf to its pool.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := sizeClass(cap(*p))
	if c >= len(bufPools) || cap(*p) != classCap(c) {
		return // not one of ours; let the GC have it
	}
	bufPools[c].Put(p)
}
