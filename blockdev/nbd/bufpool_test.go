package nbd

import "testing"

func TestBufClasses(t *testing.T) {
	tests := []struct {
		n, wantCap int
	}{
		{0, 4096 + replyHeadroom},
		{1, 4096 + replyHeadroom},
		{4096, 4096 + replyHeadroom},
		// A 4 KiB read with its reply header: the 4 KiB class, not 8.
		{replyHeadroom + 4096, 4096 + replyHeadroom},
		{replyHeadroom + 4097, 8192 + replyHeadroom},
		{1 << 20, 1<<20 + replyHeadroom},
		{replyHeadroom + 1<<20, 1<<20 + replyHeadroom},
		{replyHeadroom + 1<<20 + 1, 2<<20 + replyHeadroom},
		{replyHeadroom + MaxPayload, MaxPayload + replyHeadroom},
		// Beyond the largest class: exact, and not pooled.
		{replyHeadroom + MaxPayload + 1, replyHeadroom + MaxPayload + 1},
	}
	for _, tt := range tests {
		p := getBuf(tt.n)
		if len(*p) != tt.n || cap(*p) != tt.wantCap {
			t.Errorf("getBuf(%d): len %d cap %d, want len %d cap %d", tt.n, len(*p), cap(*p), tt.n, tt.wantCap)
		}
		putBuf(p)
	}
	// A buffer not made by getBuf is not pooled: its capacity is no class's.
	odd := make([]byte, 5000)
	putBuf(&odd)
	for range 100 {
		if p := getBuf(5000); &(*p)[0] == &odd[0] {
			t.Fatal("getBuf returned a buffer putBuf should have refused")
		}
	}
}
