package bus

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// TestFencedWritesOfAStaleOwner: once another node holds a partition's
// lease, every write of the old owner is refused and changes nothing.
func TestFencedWritesOfAStaleOwner(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	keys := streams.Keys{Prefix: "fence"}
	if _, err := migrations.Run(ctx, rdb, keys, 4); err != nil {
		t.Fatal(err)
	}
	o, err := NewOwner(OwnerConfig{Redis: rdb, Keys: keys, Partitions: 4, Node: "old", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
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
	if err := o.apply(ctx, stale, msgs); !isLeaseLost(err) {
		t.Fatalf("apply by a stale owner = %v, want lease lost", err)
	}
	other := []redis.XMessage{{ID: misrouted, Values: map[string]any{"topic": topic, "data": "2"}}}
	if err := o.apply(ctx, staleWrong, other); !isLeaseLost(err) {
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
}
