package bus

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// deadlinePartition is a held one-partition bus whose ingress has, for
// topic "t", an event with a deadline of 1 ms that subject "ann"
// acknowledges, one with the same deadline nobody acknowledges, and one
// without a deadline, all applied by the lease's owner.
func deadlinePartition(tb testing.TB) (rdb *redis.Client, keys streams.Keys, o *Owner, l *lease, acked, unacked string) {
	tb.Helper()
	ctx := context.Background()
	rdb, keys, o, l, _ = heldPartition(tb, 0)
	add := func(values ...any) string {
		return rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: values}).Val()
	}
	acked = add("topic", "t", "data", "seen", "deadline", "1")
	unacked = add("topic", "t", "data", `{"must":"see"}`, "deadline", "1")
	add("topic", "t", "data", "no deadline")
	msgs, err := o.readNew(ctx, 0, "0", o.cfg.Block)
	if err != nil || len(msgs) != 3 {
		tb.Fatalf("readNew = %v, %v", msgs, err)
	}
	if err := o.apply(ctx, l, msgs, "0-0"); err != nil {
		tb.Fatal(err)
	}
	if n := rdb.ZCard(ctx, keys.Deadlines(0)).Val(); n != 2 {
		tb.Fatalf("deadlines set holds %d events, want the 2 with a deadline", n)
	}
	// The first is acknowledged, by hand as the gateway's batch would.
	res, err := ackScript.Run(ctx, rdb, []string{keys.Topic(0, "t"), keys.Acked(0, "t")}, "ann", 1, acked).Int64Slice()
	if err != nil || len(res) != 1 || res[0] != 0 {
		tb.Fatalf("ack = %v, %v", res, err)
	}
	// Both are due once the clock has passed the later deadline.
	last := rdb.ZRangeWithScores(ctx, keys.Deadlines(0), -1, -1).Val()
	testutil.Eventually(tb, time.Second, func() error {
		if now := time.Now().UnixMilli(); now < int64(last[0].Score) {
			return fmt.Errorf("now %d, the last deadline is %d", now, int64(last[0].Score))
		}
		return nil
	})
	return rdb, keys, o, l, acked, unacked
}

// escalated returns the entries of the escalations stream.
func escalated(tb testing.TB, rdb *redis.Client, keys streams.Keys) []redis.XMessage {
	tb.Helper()
	msgs, err := rdb.XRange(context.Background(), keys.Escalations(), "-", "+").Result()
	if err != nil {
		tb.Fatal(err)
	}
	return msgs
}

func checkEscalated(tb testing.TB, rdb *redis.Client, keys streams.Keys, id string) {
	tb.Helper()
	got := escalated(tb, rdb, keys)
	if len(got) != 1 {
		tb.Fatalf("escalations = %v, want one entry", got)
	}
	want := map[string]any{"topic": "t", "id": id, "seq": "2", "data": `{"must":"see"}`, "deadline": "1"}
	for k, v := range want {
		if got[0].Values[k] != v {
			tb.Fatalf("escalation %v, want %v", got[0].Values, want)
		}
	}
}

// TestDeadlineEscalatesOnceAcrossOwners: an unacknowledged event is
// escalated once, by whichever owner holds the lease when it is due, and
// never again by the next; an acknowledged one never is; a stale owner
// writes nothing. Both the single-Redis script and the three steps used
// on Redis Cluster are checked.
func TestDeadlineEscalatesOnceAcrossOwners(t *testing.T) {
	for _, path := range []string{"atomic", "cluster steps"} {
		t.Run(path, func(t *testing.T) {
			ctx := context.Background()
			rdb, keys, o, l, _, unacked := deadlinePartition(t)
			escalate := func(o *Owner, l *lease) error {
				if path == "atomic" {
					return o.escalateDue(ctx, l)
				}
				return o.escalateDueSteps(ctx, l)
			}
			// Another node takes the partition: the old owner writes nothing.
			rdb.Set(ctx, keys.Owner(0), "m 2", 0)
			if err := escalate(o, l); classify(err) != kindLeaseLost {
				t.Fatalf("escalation by a stale owner = %v, want lease lost", err)
			}
			if got := escalated(t, rdb, keys); len(got) != 0 {
				t.Fatalf("a stale owner escalated %v", got)
			}
			o2 := testOwner(t, rdb, keys, 1, "m", 0)
			l2 := &lease{p: 0, value: "m 2"}
			if err := escalate(o2, l2); err != nil {
				t.Fatal(err)
			}
			checkEscalated(t, rdb, keys, unacked)
			if l2.nextDue != -1 || rdb.ZCard(ctx, keys.Deadlines(0)).Val() != 0 {
				t.Fatalf("next due %d, deadlines left %d; want none", l2.nextDue, rdb.ZCard(ctx, keys.Deadlines(0)).Val())
			}
			// A third owner finds nothing to do.
			rdb.Set(ctx, keys.Owner(0), "k 3", 0)
			if err := escalate(testOwner(t, rdb, keys, 1, "k", 0), &lease{p: 0, value: "k 3"}); err != nil {
				t.Fatal(err)
			}
			checkEscalated(t, rdb, keys, unacked)
			if n := o2.Stats().Escalations; n != 1 {
				t.Fatalf("escalations counted %d, want 1", n)
			}
		})
	}
}

// TestClusterStepsSurviveACrashBetweenThem: on Redis Cluster an owner that
// escalated but died before removing the events from the deadlines set
// leaves them there; the next owner repeats the steps and the dedupe set
// keeps the escalation single.
func TestClusterStepsSurviveACrashBetweenThem(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, _, unacked := deadlinePartition(t)
	members := rdb.ZRange(ctx, keys.Deadlines(0), 0, -1).Val()
	var due []dueMember
	for _, m := range members {
		d, _ := parseDue(m)
		due = append(due, d)
	}
	// Steps one and two, then the owner dies.
	if _, _, err := o.escalateOnce(ctx, l, due); err != nil {
		t.Fatal(err)
	}
	checkEscalated(t, rdb, keys, unacked)
	rdb.Set(ctx, keys.Owner(0), "m 2", 0)
	o2 := testOwner(t, rdb, keys, 1, "m", 0)
	if err := o2.escalateDueSteps(ctx, &lease{p: 0, value: "m 2"}); err != nil {
		t.Fatal(err)
	}
	checkEscalated(t, rdb, keys, unacked)
	if n := rdb.ZCard(ctx, keys.Deadlines(0)).Val(); n != 0 {
		t.Fatalf("%d events left in the deadlines set, want none", n)
	}
}

// TestDeadlinesWaitUntilDue: an event is not escalated before its
// deadline, and nextDue says when it is due.
func TestDeadlinesWaitUntilDue(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, _ := heldPartition(t, 0)
	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", "t", "data", "x", "deadline", "60000"}}).Val()
	msgs, _ := o.readNew(ctx, 0, "0", o.cfg.Block)
	if err := o.apply(ctx, l, msgs, "0-0"); err != nil {
		t.Fatal(err)
	}
	if err := o.escalateDue(ctx, l); err != nil {
		t.Fatal(err)
	}
	ms := int64(streams.MustParseID(id).Ms)
	if got := escalated(t, rdb, keys); len(got) != 0 || l.nextDue != ms+60000 {
		t.Fatalf("escalated %v, next due %d; want nothing yet, due at %d", got, l.nextDue, ms+60000)
	}
}

// TestAckedDeadlineOutlivesIdleHistory: an event acknowledged well before
// its deadline is never escalated, even when the topic's history (and,
// with it, its cursors) would expire, idle, before the deadline is due:
// deadlines may be up to streams.MaxDeadline, history lives HistoryTTL.
func TestAckedDeadlineOutlivesIdleHistory(t *testing.T) {
	for _, path := range []string{"atomic", "cluster steps"} {
		t.Run(path, func(t *testing.T) {
			ctx := context.Background()
			rdb, keys, o, l, _ := heldPartition(t, 0)
			o.cfg.HistoryTTL = 50 * time.Millisecond
			id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", "t", "data", "x", "deadline", "60000"}}).Val()
			msgs, err := o.readNew(ctx, 0, "0", o.cfg.Block)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("readNew = %v, %v", msgs, err)
			}
			if err := o.apply(ctx, l, msgs, "0-0"); err != nil {
				t.Fatal(err)
			}
			hist, acked := keys.Topic(0, "t"), keys.Acked(0, "t")
			res, err := ackScript.Run(ctx, rdb, []string{hist, acked}, "ann", 1, id).Int64Slice()
			if err != nil || len(res) != 1 || res[0] != 0 {
				t.Fatalf("ack = %v, %v", res, err)
			}
			// The topic goes idle: its history expires.
			for end := time.Now().Add(5 * time.Second); rdb.Exists(ctx, hist).Val() != 0; {
				if time.Now().After(end) {
					t.Fatal("history did not expire")
				}
				runtime.Gosched()
			}
			// The deadline comes (moved to now rather than waited for).
			m := rdb.ZRange(ctx, keys.Deadlines(0), 0, -1).Val()
			if len(m) != 1 {
				t.Fatalf("deadlines = %v, want the event", m)
			}
			rdb.ZAdd(ctx, keys.Deadlines(0), redis.Z{Score: 1, Member: m[0]})
			if path == "atomic" {
				err = o.escalateDue(ctx, l)
			} else {
				err = o.escalateDueSteps(ctx, l)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := escalated(t, rdb, keys); len(got) != 0 {
				t.Fatalf("an acknowledged event was escalated: %v", got)
			}
			if n := rdb.ZCard(ctx, keys.Deadlines(0)).Val(); n != 0 {
				t.Fatalf("%d events left in the deadlines set, want none", n)
			}
		})
	}
}

// TestDeadlinesDropAMalformedMember: a member of the deadlines set that
// does not parse (written by hand, or by another version) leaves the set
// without an escalation, and does not stop the partition's escalations.
func TestDeadlinesDropAMalformedMember(t *testing.T) {
	for _, path := range []string{"atomic", "cluster steps"} {
		t.Run(path, func(t *testing.T) {
			ctx := context.Background()
			rdb, keys, o, l, _ := heldPartition(t, 0)
			rdb.ZAdd(ctx, keys.Deadlines(0), redis.Z{Score: 1, Member: "garbage"})
			var err error
			if path == "atomic" {
				err = o.escalateDue(ctx, l)
			} else {
				err = o.escalateDueSteps(ctx, l)
			}
			if err != nil {
				t.Fatalf("escalating = %v, want the member dropped", err)
			}
			if n := rdb.ZCard(ctx, keys.Deadlines(0)).Val(); n != 0 || len(escalated(t, rdb, keys)) != 0 {
				t.Fatalf("%d members left, escalations %v; want none", n, escalated(t, rdb, keys))
			}
		})
	}
}
