package testutil

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

var errNotYet = errors.New("not yet")

func TestPollReturnsOnceFnHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls, start := 0, time.Now()
		err := Poll(time.Second, func() error {
			if calls++; calls < 3 {
				return errNotYet
			}
			return nil
		})
		if took := time.Since(start); err != nil || calls != 3 || took != 20*time.Millisecond {
			t.Fatalf("Poll = %v after %d calls and %v, want nil after 3 calls and two 10 ms pauses", err, calls, took)
		}
	})
}

func TestPollGivesUpWithFnsError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		never, start := errors.New("never"), time.Now()
		err := Poll(time.Second, func() error { return never })
		if took := time.Since(start); !errors.Is(err, never) || took <= time.Second {
			t.Fatalf("Poll = %v after %v, want fn's error after the 1s timeout", err, took)
		}
	})
}
