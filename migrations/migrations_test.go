package migrations

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/streams"
)

func TestRunCreatesTheBus(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	keys := streams.Keys{Prefix: "m1"}
	applied, err := Run(ctx, rdb, keys, 8)
	if err != nil || applied != len(Steps) {
		t.Fatalf("Run = %d, %v; want %d applied", applied, err, len(Steps))
	}
	if v, _ := Version(ctx, rdb, keys); v != Latest() {
		t.Fatalf("schema = %d, want %d", v, Latest())
	}
	for p := 0; p < 8; p++ {
		groups, err := rdb.XInfoGroups(ctx, keys.Ingress(p)).Result()
		if err != nil || len(groups) != 1 || groups[0].Name != streams.Group {
			t.Fatalf("partition %d groups = %v, %v", p, groups, err)
		}
		if e, _ := rdb.HGet(ctx, keys.PartitionMeta(p), "epoch").Result(); len(e) != 8 {
			t.Fatalf("partition %d epoch = %q", p, e)
		}
	}
	epoch, _ := rdb.HGet(ctx, keys.PartitionMeta(0), "epoch").Result()
	if applied, err := Run(ctx, rdb, keys, 0); err != nil || applied != 0 {
		t.Fatalf("second Run = %d, %v; want nothing to do", applied, err)
	}
	if again, _ := rdb.HGet(ctx, keys.PartitionMeta(0), "epoch").Result(); again != epoch {
		t.Fatalf("epoch changed from %s to %s on a second run", epoch, again)
	}
}

// TestRestore: a meta with its partition count is left alone; a lost one
// is written back with the count and the latest schema, once.
func TestRestore(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	keys := streams.Keys{Prefix: "m5"}
	if _, err := Run(ctx, rdb, keys, 8); err != nil {
		t.Fatal(err)
	}
	rdb.HSet(ctx, keys.Meta(), "schema", Latest()+1) // a newer binary's: not this one's to touch
	if wrote, err := Restore(ctx, rdb, keys, 8); wrote || err != nil {
		t.Fatalf("Restore on a bus with its meta = %v, %v; want nothing written", wrote, err)
	}
	if v, _ := Version(ctx, rdb, keys); v != Latest()+1 {
		t.Fatalf("schema = %d after Restore, want %d as it was", v, Latest()+1)
	}
	rdb.Del(ctx, keys.Meta())
	if wrote, err := Restore(ctx, rdb, keys, 8); !wrote || err != nil {
		t.Fatalf("Restore of a lost meta = %v, %v; want written", wrote, err)
	}
	if wrote, err := Restore(ctx, rdb, keys, 8); wrote || err != nil {
		t.Fatalf("second Restore = %v, %v; want nothing written", wrote, err)
	}
	n, err := streams.Partitions(ctx, rdb, keys)
	if v, _ := Version(ctx, rdb, keys); err != nil || n != 8 || v != Latest() {
		t.Fatalf("after Restore: %d partitions (%v), schema %d; want 8, %d", n, err, v, Latest())
	}
}

func TestRunRefusesAnotherPartitionCount(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	keys := streams.Keys{Prefix: "m2"}
	if _, err := Run(ctx, rdb, keys, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, rdb, keys, 8); !errors.Is(err, ErrPartitionMismatch) {
		t.Fatalf("Run with 8 partitions on a 4-partition bus = %v, want ErrPartitionMismatch", err)
	}
	if _, err := Run(ctx, rdb, keys, 0); err != nil {
		t.Fatalf("Run without a count on an existing bus = %v", err)
	}
	if _, err := Run(ctx, rdb, keys, -1); err == nil {
		t.Fatal("Run with -1 partitions succeeded")
	}
}

func TestConcurrentRuns(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	keys := streams.Keys{Prefix: "m3"}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Run(ctx, srv.Client(t), keys, 16)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Run: %v", err)
		}
	}
	rdb := srv.Client(t)
	if n, err := streams.Partitions(ctx, rdb, keys); err != nil || n != 16 {
		t.Fatalf("partitions = %d, %v", n, err)
	}
	if v, _ := Version(ctx, rdb, keys); v != Latest() {
		t.Fatalf("schema = %d, want %d", v, Latest())
	}
}

func TestRunKeepsEntriesAddedBeforeIt(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	keys := streams.Keys{Prefix: "m4"}
	// A service published before the bus existed: the group starts at 0.
	early := keys.Ingress(streams.Partition("early", 4))
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: early, Values: []any{"topic", "early", "data", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, rdb, keys, 4); err != nil {
		t.Fatal(err)
	}
	groups, err := rdb.XInfoGroups(ctx, early).Result()
	if err != nil || groups[0].LastDeliveredID != "0-0" {
		t.Fatalf("group = %+v, %v; want it to start before the early entry", groups, err)
	}
}

// TestRaiseVersionScript checks the embedded Lua holds code and compiles in
// a real Redis.
func TestRaiseVersionScript(t *testing.T) {
	redistest.NonEmptyLua(t, "lua/raise_version.lua", raiseVersionLua)
	redistest.LoadScript(t, redistest.Start(t).Client(t), raiseVersion)
}
