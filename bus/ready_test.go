package bus

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestWaitReady: subscriptions wait for the live channel's confirmation,
// every waiter is woken by it, a topic never confirmed times out, and a
// ready topic keeps no channel. The clock is synctest's.
func TestWaitReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := &Gateway{cfg: GatewayConfig{ReadyTimeout: 100 * time.Millisecond}, ctx: context.Background()}

		lost := testTopic("never")
		start := time.Now()
		if g.waitReady(lost) {
			t.Fatal("waitReady = true for a topic never confirmed")
		}
		if d := time.Since(start); d < g.cfg.ReadyTimeout {
			t.Fatalf("gave up after %v, before ReadyTimeout %v", d, g.cfg.ReadyTimeout)
		}

		g.cfg.ReadyTimeout = 10 * time.Second
		tp := testTopic("t")
		var wg sync.WaitGroup
		results := make(chan bool, 3)
		for range 3 {
			wg.Go(func() { results <- g.waitReady(tp) })
		}
		synctest.Wait() // every waiter is blocked on the topic's channel
		if tp.slow == nil || tp.slow.waiting == nil {
			t.Fatal("an unconfirmed topic has no channel to wait on")
		}
		tp.markReady()
		wg.Wait()
		close(results)
		for ok := range results {
			if !ok {
				t.Fatal("a waiter was not woken by markReady")
			}
		}
		if tp.slow != nil {
			t.Fatal("a ready topic still holds its channel (or its topicSlow)")
		}
		if !g.waitReady(tp) {
			t.Fatal("waitReady = false for a ready topic")
		}
	})
}
