package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// TestDeadlineEscalatesOnceWhenTheOwnerIsKilled: events with a deadline
// are escalated once each, the one due before the owner is killed by it
// and the one due after by the node that takes the partition over, and
// the one a subject acknowledged never.
func TestDeadlineEscalatesOnceWhenTheOwnerIsKilled(t *testing.T) {
	f := newFleet(t, "a", "b")
	owners := f.waitBalanced(10*time.Second, "a", "b")
	topic := ""
	for _, tp := range f.topics {
		if owners[streams.Partition(tp, fleetPartitions)] == "a" {
			topic = tp
			break
		}
	}
	ctx := context.Background()
	add := func(data, deadline string) string {
		t.Helper()
		id, err := f.pub.rdb.XAdd(ctx, &redis.XAddArgs{
			Stream: f.pub.keys.Ingress(streams.Partition(topic, fleetPartitions)),
			Values: []any{"topic", topic, "data", data, "deadline", deadline},
		}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	escalated := func() []redis.XMessage {
		t.Helper()
		msgs, err := f.pub.rdb.XRange(ctx, f.pub.keys.Escalations(), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	early := add("early", "100")
	seen := add("seen", "4000")
	late := add("late", "4000")

	redistest.Eventually(t, wait, func() error {
		if e := escalated(); len(e) != 1 || e[0].Values["id"] != early {
			return fmt.Errorf("escalations %v, want the early event", e)
		}
		return nil
	})
	// ann, on the other node, sees the second event (a cursor there covers
	// the early one too, which is why it is acknowledged only now).
	c := wstest.Dial(t, f.nodes["b"].url+"?user=ann&topic="+topic+"&since=0")
	c.Expect("subscribed", wait)
	c.Events(3, wait)
	c.Send(map[string]string{"type": "ack", "topic": topic, "id": seen})
	redistest.Eventually(t, wait, func() error {
		v, _ := f.pub.rdb.HGet(ctx, f.pub.keys.Acked(streams.Partition(topic, fleetPartitions), topic), "max").Result()
		if v != seen {
			return fmt.Errorf("highest acknowledged %q, want %s", v, seen)
		}
		return nil
	})
	f.nodes["a"].kill(t)
	f.waitTakenOver(owners, "a")
	redistest.Eventually(t, 10*time.Second, func() error {
		if e := escalated(); len(e) < 2 {
			return fmt.Errorf("escalations %v, want the late event too", e)
		}
		return nil
	})
	time.Sleep(time.Second)
	e := escalated()
	if len(e) != 2 || e[0].Values["id"] != early || e[1].Values["id"] != late || e[1].Values["data"] != "late" || e[1].Values["seq"] != "3" {
		t.Fatalf("escalations = %v, want early (%s) and late (%s, seq 3) once each", e, early, late)
	}
}
