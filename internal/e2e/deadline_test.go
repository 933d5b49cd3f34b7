package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// TestDeadlineEscalatesOnceWhenTheOwnerIsKilled: events with a deadline
// are escalated once each, the one due before the owner is killed by it
// and the one due after by the node that takes the partition over, and
// the one a subject acknowledged never.
func TestDeadlineEscalatesOnceWhenTheOwnerIsKilled(t *testing.T) {
	deadlineOwnerKilled(t, newFleet(t, "a", "b"))
}

// TestClusterDeadlinesAndAcks is TestDeadlineEscalatesOnceWhenTheOwnerIsKilled
// on a three-node Redis Cluster, where the escalations stream lives in
// another slot than the partition (three steps, deduplicated), and the
// cursor is read in a transaction of the topic's slot.
func TestClusterDeadlinesAndAcks(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	deadlineOwnerKilled(t, newFleetOn(t, cl.URL(), cl.Client(t), "a", "b"))
}

// deadlineOwnerKilled publishes three events with deadlines to a topic of
// node a; the first falls due and is escalated, a subject on node b
// acknowledges the second, a is killed, and b escalates the third.
func deadlineOwnerKilled(t *testing.T, f *fleet) {
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
		return f.pub.XAddTo(t, streams.Partition(topic, f.pub.N), "topic", topic, "data", data, "deadline", deadline)
	}
	escalated := func() []redis.XMessage {
		t.Helper()
		msgs, err := f.pub.Redis.XRange(ctx, f.pub.Keys.Escalations(), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	early := add("early", "100")
	seen := add("seen", "4000")
	late := add("late", "4000")

	testutil.Eventually(t, testutil.Wait, func() error {
		if e := escalated(); len(e) != 1 || e[0].Values["id"] != early {
			return fmt.Errorf("escalations %v, want the early event", e)
		}
		return nil
	})
	// ann, on the other node, sees the second event (a cursor there covers
	// the early one too, which is why it is acknowledged only now).
	c := wstest.Dial(t, f.nodes["b"].url+"?user=ann&topic="+topic+"&since=0")
	c.Expect("subscribed", testutil.Wait)
	c.Events(3, testutil.Wait)
	c.Send(map[string]string{"type": "ack", "topic": topic, "id": seen})
	testutil.Eventually(t, testutil.Wait, func() error {
		v, _ := f.pub.Redis.HGet(ctx, f.pub.Keys.Acked(streams.Partition(topic, fleetPartitions), topic), "max").Result()
		if v != seen {
			return fmt.Errorf("highest acknowledged %q, want %s", v, seen)
		}
		return nil
	})
	// Another device of ann resumes from the cursor.
	d := wstest.Dial(t, f.nodes["b"].url+"?user=ann&topic="+topic+"&since=acked")
	if sub := d.Expect("subscribed", testutil.Wait); sub.Acked != seen || sub.Unread == nil || *sub.Unread != 1 {
		t.Fatalf("subscribed = %+v, want acked %s, unread 1", sub, seen)
	}
	if ev := d.Events(1, testutil.Wait)[0]; ev.ID != late {
		t.Fatalf("resumed from the cursor with %s, want %s", ev.ID, late)
	}
	f.nodes["a"].kill(t)
	f.waitTakenOver(owners, "a")
	testutil.Eventually(t, 10*time.Second, func() error {
		if e := escalated(); len(e) < 2 {
			return fmt.Errorf("escalations %v, want the late event too", e)
		}
		return nil
	})
	time.Sleep(time.Second) // under test: nothing more comes
	e := escalated()
	if len(e) != 2 || e[0].Values["id"] != early || e[1].Values["id"] != late || e[1].Values["data"] != "late" || e[1].Values["seq"] != "3" {
		t.Fatalf("escalations = %v, want early (%s) and late (%s, seq 3) once each", e, early, late)
	}
}
