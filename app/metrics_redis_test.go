package app

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/streams"
)

// TestRedisErrorsCountsFailuresNotAnswers runs commands on a real Redis
// whose replies the bus handles as answers (nil, no such key, NOSCRIPT,
// BUSYGROUP, a lost lease) and ones that are failures (a wrong type, a refused
// connection), and counts only the failures.
func TestRedisErrorsCountsFailuresNotAnswers(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	errs := &redisErrors{}
	rdb.AddHook(errs)
	key := redistest.Prefix(t) + ":s"

	_ = rdb.Get(ctx, key+":none").Err()                                         // redis.Nil
	_ = rdb.XInfoStream(ctx, key+":none").Err()                                 // ERR no such key
	_ = rdb.EvalSha(ctx, "0123456789012345678901234567890123456789", nil).Err() // NOSCRIPT
	_ = rdb.XGroupCreateMkStream(ctx, key, "g", "0").Err()
	_ = rdb.XGroupCreateMkStream(ctx, key, "g", "0").Err() // BUSYGROUP
	_ = rdb.Eval(ctx, "return redis.error_reply('WSBUSLEASE lease lost')", nil).Err()
	pipe := rdb.Pipeline()
	pipe.Get(ctx, key+":none")
	pipe.XGroupCreate(ctx, key, "g", "0")
	_, _ = pipe.Exec(ctx)
	if n := errs.n.Load(); n != 0 {
		t.Fatalf("%d errors counted for replies the bus expects", n)
	}

	_ = rdb.Get(ctx, key).Err() // WRONGTYPE: a stream read as a string
	pipe = rdb.Pipeline()
	pipe.Get(ctx, key)
	pipe.Incr(ctx, key)
	_, _ = pipe.Exec(ctx)
	if n := errs.n.Load(); n != 3 {
		t.Fatalf("%d errors counted for 3 failed commands", n)
	}

	gone := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)), MaxRetries: -1})
	defer gone.Close()
	gone.AddHook(errs)
	_ = gone.Ping(ctx).Err()
	if n := errs.n.Load(); n != 4 {
		t.Fatalf("%d errors after a command on a refused connection, want it counted once: 4", n)
	}
}

// TestIngressLagCountsUnreadAndPending reads wsbus_bus_ingress_lag of two
// owned partitions of a real Redis: entries the group has not read and
// entries read but not acknowledged count; a partition not owned is not
// reported.
func TestIngressLagCountsUnreadAndPending(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	keys := streams.Keys{Prefix: redistest.Prefix(t)}
	for p := range 3 {
		if err := rdb.XGroupCreateMkStream(ctx, keys.Ingress(p), streams.Group, "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(1), Values: []any{"topic", "t", "data", "x"}})
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(2), Values: []any{"topic", "t", "data", "x"}})
	}
	read, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: streams.Group, Consumer: "c", Streams: []string{keys.Ingress(1), ">"}, Count: 2}).Result()
	if err != nil {
		t.Fatal(err)
	}
	lag := newIngressLag(rdb, keys, func() []int { return []int{0, 1} })
	want := `
# HELP wsbus_bus_ingress_lag Ingress entries of a partition this node owns that are not applied yet (moved to history and published).
# TYPE wsbus_bus_ingress_lag gauge
wsbus_bus_ingress_lag{partition="0"} 0
wsbus_bus_ingress_lag{partition="1"} 5
`
	if err := testutil.CollectAndCompare(lag, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	rdb.XAck(ctx, keys.Ingress(1), streams.Group, read[0].Messages[0].ID, read[0].Messages[1].ID)
	if got := testutil.ToFloat64(newIngressLag(rdb, keys, func() []int { return []int{1} })); got != 3 {
		t.Fatalf("partition 1 lag %v after 2 of 5 applied, want 3", got)
	}
}
