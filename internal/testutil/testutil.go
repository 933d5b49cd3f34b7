// Package testutil holds the test helpers every package shares and that
// need nothing but the standard library: ws tests use it without pulling
// in Redis.
//
//	testutil.Eventually(t, testutil.Wait, func() error {
//		if n := s.Len(); n != 0 {
//			return fmt.Errorf("%d connections left", n)
//		}
//		return nil
//	})
package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Wait bounds how long a test waits for what should come at once (an
// event, a reply, a close): a bound that only a failing test reaches,
// never a delay.
const Wait = 10 * time.Second

// Eventually polls fn every 10 ms until it returns nil, and fails the test
// with fn's last error once timeout has passed. It is how a test waits for
// something another goroutine or process does: never a bare time.Sleep.
func Eventually(tb testing.TB, timeout time.Duration, fn func() error) {
	tb.Helper()
	if err := Poll(timeout, fn); err != nil {
		tb.Fatal(err)
	}
}

// Poll is Eventually for a goroutine other than the test's, which must
// not stop the test: it returns fn's last error, nil once fn returned nil.
func Poll(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
