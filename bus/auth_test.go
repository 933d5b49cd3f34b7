package bus

import (
	"testing"
	"time"
)

// TestExpiryForgetsClosedClient: once a connection's client is removed
// (Closed), a token refresh that raced the close cannot put it back in the
// expiry heap, which would keep the client and its connection until the
// token ran out.
func TestExpiryForgetsClosedClient(t *testing.T) {
	in := time.Now().Add(time.Hour)
	tests := []struct {
		name  string
		steps string // s: set, r: remove
		want  int    // clients left in the heap
	}{
		{"set", "s", 1},
		{"refresh", "ss", 1},
		{"closed", "sr", 0},
		{"refresh after close", "srs", 0},
		{"closed before a token was set", "rs", 0},
		{"closed twice", "srrs", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newExpiries()
			cl, other := newClient(nil), newClient(nil)
			e.set(other, in.Add(time.Minute)) // a heap of one is no test of the index
			for _, step := range tt.steps {
				switch step {
				case 's':
					e.set(cl, in)
				case 'r':
					e.remove(cl)
				}
			}
			if got := len(e.h) - 1; got != tt.want {
				t.Fatalf("after %q the heap holds the client %d times, want %d", tt.steps, got, tt.want)
			}
			for i, c := range e.h {
				if int(c.expIdx) != i {
					t.Fatalf("heap entry %d has index %d", i, c.expIdx)
				}
			}
		})
	}
}
