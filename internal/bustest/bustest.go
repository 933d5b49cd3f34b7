// Package bustest is a wsbus bus in Redis for tests: its keys, its
// partition count, and publishing as any service does, with a plain XADD
// to the topic's partition's ingress.
//
//	b := bustest.Start(t, 4) // a redis-server of its own, migrated
//	id := b.XAdd(t, "orders", `{"n":1}`)
package bustest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// Bus is a migrated bus: the client it is reached with, its keys and its
// partition count.
type Bus struct {
	Redis redis.UniversalClient
	Keys  streams.Keys
	N     int // partitions
}

// Start starts a redis-server of its own and migrates a bus of n
// partitions on it, with its own key prefix. Its Redis is a *redis.Client.
func Start(tb testing.TB, n int) *Bus {
	tb.Helper()
	rdb := redistest.Start(tb).Client(tb)
	keys := streams.Keys{Prefix: redistest.Prefix(tb)}
	if _, err := migrations.Run(context.Background(), rdb, keys, n); err != nil {
		tb.Fatalf("migrating a bus of %d partitions: %v", n, err)
	}
	return &Bus{Redis: rdb, Keys: keys, N: n}
}

// On is the bus of prefix that rdb (a single Redis's client or a
// cluster's) already holds, migrated by a node or by Start.
func On(tb testing.TB, rdb redis.UniversalClient, prefix string) *Bus {
	tb.Helper()
	b := &Bus{Redis: rdb, Keys: streams.Keys{Prefix: prefix}}
	n, err := streams.Partitions(context.Background(), rdb, b.Keys)
	if err != nil {
		tb.Fatalf("reading the partition count of %q: %v", prefix, err)
	}
	b.N = n
	return b
}

// XAdd publishes data to topic as any service would, and returns the
// entry's ID.
func (b *Bus) XAdd(tb testing.TB, topic, data string) string {
	tb.Helper()
	id, err := b.Add(context.Background(), topic, data)
	if err != nil {
		tb.Fatalf("XADD to %s: %v", topic, err)
	}
	return id
}

// Add is XAdd for a goroutine other than the test's, or a test that
// expects Redis to fail: it returns Redis's error.
func (b *Bus) Add(ctx context.Context, topic, data string) (string, error) {
	return b.Redis.XAdd(ctx, &redis.XAddArgs{
		Stream: b.Keys.Ingress(streams.Partition(topic, b.N)),
		Values: []any{"topic", topic, "data", data},
	}).Result()
}

// XAddTo adds an entry with fields to partition p's ingress, and returns
// its ID: for entries no service would write (a wrong partition, a field
// missing, a deadline).
func (b *Bus) XAddTo(tb testing.TB, p int, fields ...any) string {
	tb.Helper()
	id, err := b.Redis.XAdd(context.Background(), &redis.XAddArgs{Stream: b.Keys.Ingress(p), Values: fields}).Result()
	if err != nil {
		tb.Fatalf("XADD to partition %d: %v", p, err)
	}
	return id
}
