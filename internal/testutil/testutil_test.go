package testutil

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestPoll: Poll returns as soon as fn holds, and fn's last error once the
// timeout has passed, not before. The clock is synctest's.
func TestPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		start := time.Now()
		if err := Poll(time.Second, func() error {
			if calls++; calls < 3 {
				return errors.New("not yet")
			}
			return nil
		}); err != nil || calls != 3 {
			t.Fatalf("Poll = %v after %d calls, want nil after 3", err, calls)
		}
		if d := time.Since(start); d != 20*time.Millisecond {
			t.Fatalf("Poll took %v, want two 10 ms pauses", d)
		}

		never := errors.New("never")
		start = time.Now()
		err := Poll(time.Second, func() error { return never })
		if !errors.Is(err, never) {
			t.Fatalf("Poll = %v, want it to wrap fn's error", err)
		}
		if d := time.Since(start); d <= time.Second {
			t.Fatalf("Poll gave up after %v, before its timeout", d)
		}
	})
}
