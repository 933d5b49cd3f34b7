package bus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// testBus migrates a bus of n partitions on a redis-server of its own.
func testBus(tb testing.TB, n int) (*redis.Client, streams.Keys) {
	tb.Helper()
	rdb := redistest.Start(tb).Client(tb)
	keys := streams.Keys{Prefix: "test"}
	if _, err := migrations.Run(context.Background(), rdb, keys, n); err != nil {
		tb.Fatal(err)
	}
	return rdb, keys
}

// testOwner returns an Owner of node on the bus, logging nowhere.
func testOwner(tb testing.TB, rdb *redis.Client, keys streams.Keys, n int, node string, block time.Duration) *Owner {
	tb.Helper()
	o, err := NewOwner(OwnerConfig{Redis: rdb, Keys: keys, Partitions: n, Node: node, Block: block, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

// TestFencedWritesOfAStaleOwner: once another node holds a partition's
// lease, every write of the old owner is refused and changes nothing.
func TestFencedWritesOfAStaleOwner(t *testing.T) {
	ctx := context.Background()
	rdb, keys := testBus(t, 4)
	o := testOwner(t, rdb, keys, 4, "old", 0)
	topic := "fenced"
	p := streams.Partition(topic, 4)
	wrong := (p + 1) % 4
	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(p), Values: []any{"topic", topic, "data", "1"}}).Val()
	misrouted := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(wrong), Values: []any{"topic", topic, "data", "2"}}).Val()
	stale := &lease{p: p, value: "old 1"}
	staleWrong := &lease{p: wrong, value: "old 1"}
	// Another node took both partitions with newer tokens.
	rdb.Set(ctx, keys.Owner(p), "new 2", 0)
	rdb.Set(ctx, keys.Owner(wrong), "new 2", 0)

	msgs := []redis.XMessage{{ID: id, Values: map[string]any{"topic": topic, "data": "1"}}}
	if err := o.apply(ctx, stale, msgs, false); !isLeaseLost(err) {
		t.Fatalf("apply by a stale owner = %v, want lease lost", err)
	}
	other := []redis.XMessage{{ID: misrouted, Values: map[string]any{"topic": topic, "data": "2"}}}
	if err := o.apply(ctx, staleWrong, other, false); !isLeaseLost(err) {
		t.Fatalf("forward by a stale owner = %v, want lease lost", err)
	}
	if err := o.trim(ctx, stale); !isLeaseLost(err) {
		t.Fatalf("trim by a stale owner = %v, want lease lost", err)
	}
	if n := rdb.Exists(ctx, keys.Topic(p, topic)).Val(); n != 0 {
		t.Fatal("a stale owner wrote history")
	}
	if n := rdb.XLen(ctx, keys.Ingress(p)).Val(); n != 1 {
		t.Fatalf("ingress of %d holds %d entries, want only the original (no forward)", p, n)
	}
	if err := o.ensure(ctx, stale); !isLeaseLost(err) {
		t.Fatalf("ensure by a stale owner = %v, want lease lost", err)
	}
	if msgs, _, err := o.readPending(ctx, stale); !isLeaseLost(err) || len(msgs) > 0 {
		t.Fatalf("read by a stale owner = %v, %v; want lease lost", msgs, err)
	}
	if err := o.apply(ctx, stale, msgs, true); !isLeaseLost(err) {
		t.Fatalf("apply of new entries by a stale owner = %v, want lease lost", err)
	}
	if err := o.claim(ctx, stale); !isLeaseLost(err) {
		t.Fatalf("claim by a stale owner = %v, want lease lost", err)
	}
	if n := rdb.XPending(ctx, keys.Ingress(p), streams.Group).Val().Count; n != 0 {
		t.Fatalf("%d entries pending after a stale owner's read, want none taken", n)
	}
}

// TestStaleReaderTakesNothing: an owner whose lease was lost while its
// pipeline waited for new entries (a pause, a Redis failover) must not take
// the next entry from the partition's new owner. Redis hands a new entry to
// the reader that has waited longest, so the stale one is waiting first.
func TestStaleReaderTakesNothing(t *testing.T) {
	ctx := context.Background()
	rdb, keys := testBus(t, 4)
	owner := func(node string) *Owner { return testOwner(t, rdb, keys, 4, node, 10*time.Second) }
	waiting := func(n int) {
		t.Helper()
		redistest.Eventually(t, 5*time.Second, func() error {
			info := rdb.Info(ctx, "clients").Val()
			if !strings.Contains(info, "blocked_clients:"+strconv.Itoa(n)+"\r\n") {
				return fmt.Errorf("want %d readers waiting: %s", n, info)
			}
			return nil
		})
	}
	topic := "stale-reader"
	p := streams.Partition(topic, 4)

	rdb.Set(ctx, keys.Owner(p), "old 1", 0)
	oldCtx, stopOld := context.WithCancel(ctx)
	defer stopOld()
	old := owner("old")
	old.start(oldCtx, p, "old 1")
	waiting(1)

	// The old lease is gone (expired in a failover, say) and a new owner
	// holds the partition; the old pipeline is still waiting in Redis.
	rdb.Set(ctx, keys.Owner(p), "new 2", 0)
	newCtx, stopNew := context.WithCancel(ctx)
	defer stopNew()
	owner("new").start(newCtx, p, "new 2")
	waiting(2)

	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(p), Values: []any{"topic", topic, "data", "1"}}).Val()
	redistest.Eventually(t, 5*time.Second, func() error {
		got, err := rdb.XRange(ctx, keys.Topic(p, topic), "-", "+").Result()
		if err != nil || len(got) != 1 || got[0].ID != id {
			pending := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: keys.Ingress(p), Group: streams.Group, Start: "-", End: "+", Count: 10}).Val()
			return fmt.Errorf("history of %s = %v, %v; want %s; pending %+v", topic, got, err, id, pending)
		}
		return nil
	})
}

// TestTakeChecksTheEntries: a batch read outside the consumer group is
// applied only if the group hands over the same entries; otherwise nothing
// is applied and what the group handed over is read from the pending list.
func TestTakeChecksTheEntries(t *testing.T) {
	ctx := context.Background()
	rdb, keys := testBus(t, 1)
	o := testOwner(t, rdb, keys, 1, "n", 0)
	l := &lease{p: 0, value: "n 1"}
	rdb.Set(ctx, keys.Owner(0), l.value, 0)
	for i := range 2 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", "t", "data", strconv.Itoa(i)}})
	}
	msgs, err := o.readNew(ctx, 0, "0")
	if err != nil || len(msgs) != 2 {
		t.Fatalf("readNew = %v, %v; want both entries", msgs, err)
	}
	// The group's next entry is the first, not the second.
	if err := o.apply(ctx, l, msgs[1:], true); !isTakeRefused(err) {
		t.Fatalf("apply of the second entry alone = %v, want refused", err)
	}
	if n := rdb.XLen(ctx, keys.Topic(0, "t")).Val(); n != 0 {
		t.Fatalf("history holds %d entries after a refused take, want 0", n)
	}
	pending, after, err := o.readPending(ctx, l)
	if err != nil || len(pending) != 1 || pending[0].ID != msgs[0].ID || after != "" {
		t.Fatalf("readPending = %v, %q, %v; want the first entry", pending, after, err)
	}
	if err := o.apply(ctx, l, pending, false); err != nil {
		t.Fatal(err)
	}
	if _, after, err = o.readPending(ctx, l); err != nil || after != msgs[0].ID {
		t.Fatalf("readPending with none pending = %q, %v; want the last delivered ID %s", after, err, msgs[0].ID)
	}
	rest, err := o.readNew(ctx, 0, after)
	if err != nil || len(rest) != 1 || rest[0].ID != msgs[1].ID {
		t.Fatalf("readNew after %s = %v, %v; want the second entry", after, rest, err)
	}
	if err := o.apply(ctx, l, rest, true); err != nil {
		t.Fatal(err)
	}
	got := rdb.XRange(ctx, keys.Topic(0, "t"), "-", "+").Val()
	if len(got) != 2 || got[0].ID != msgs[0].ID || got[1].ID != msgs[1].ID {
		t.Fatalf("history = %v, want both entries in order", got)
	}
	if n := rdb.XPending(ctx, keys.Ingress(0), streams.Group).Val().Count; n != 0 {
		t.Fatalf("%d entries still pending, want none", n)
	}
}
