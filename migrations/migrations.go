package migrations

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// DefaultPartitions is the partition count of a new bus when none is given.
const DefaultPartitions = 64

// MaxPartitions bounds the partition count: each owned partition holds a
// blocking Redis connection on its owner.
const MaxPartitions = 4096

// Step is one versioned migration.
type Step struct {
	Version int
	Name    string
	Apply   func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys, n int) error
}

// Steps are the migrations in the order they are applied.
var Steps = []Step{
	{1, "partitions, ingress streams, consumer groups and epochs", createPartitions},
}

// Latest is the schema version this binary migrates to.
func Latest() int { return Steps[len(Steps)-1].Version }

// Run applies the steps the bus has not had yet and returns how many it ran.
// partitions is the count for a new bus; zero means DefaultPartitions, or
// the existing count on a bus that has one. A non-zero count that differs
// from the existing one is ErrPartitionMismatch.
func Run(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys, partitions int) (int, error) {
	if partitions < 0 || partitions > MaxPartitions {
		return 0, fmt.Errorf("migrations: partitions must be 1..%d, got %d", MaxPartitions, partitions)
	}
	n, err := fixPartitions(ctx, rdb, keys, partitions)
	if err != nil {
		return 0, err
	}
	current, err := Version(ctx, rdb, keys)
	if err != nil {
		return 0, err
	}
	if current > Latest() {
		return 0, fmt.Errorf("%w: bus has %d, binary knows %d", ErrTooNew, current, Latest())
	}
	applied := 0
	for _, s := range Steps {
		if s.Version <= current {
			continue
		}
		if err := s.Apply(ctx, rdb, keys, n); err != nil {
			return applied, fmt.Errorf("applying migration %d (%s): %w", s.Version, s.Name, err)
		}
		if err := raiseVersion.Run(ctx, rdb, []string{keys.Meta()}, s.Version).Err(); err != nil {
			return applied, fmt.Errorf("recording migration %d: %w", s.Version, err)
		}
		applied++
	}
	return applied, nil
}

// Version returns the schema version of the bus, 0 when it is new.
func Version(ctx context.Context, rdb redis.Cmdable, keys streams.Keys) (int, error) {
	s, err := rdb.HGet(ctx, keys.Meta(), "schema").Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return strconv.Atoi(s)
}

// raiseVersion sets the schema version only upward: lua/raise_version.lua.
var raiseVersion = redis.NewScript(raiseVersionLua)

//go:embed lua/raise_version.lua
var raiseVersionLua string

// Restore writes back the partition count n and the latest schema
// version into <prefix>:meta when it has no partition count: Redis lost
// the meta of a bus that gateways still serve (a restart without
// persistence, a flush), and without it `wsbus publish` and `wsbus status`
// would call the bus not migrated. The gateways recreate each partition's
// streams and epoch themselves (bus.Owner). It reports whether it wrote.
func Restore(ctx context.Context, rdb redis.Cmdable, keys streams.Keys, n int) (bool, error) {
	wrote, err := restore.Run(ctx, rdb, []string{keys.Meta()}, n, Latest()).Int()
	if err != nil {
		return false, fmt.Errorf("restoring %s: %w", keys.Meta(), err)
	}
	return wrote == 1, nil
}

// restore is lua/restore.lua.
var restore = redis.NewScript(restoreLua)

//go:embed lua/restore.lua
var restoreLua string

func fixPartitions(ctx context.Context, rdb redis.Cmdable, keys streams.Keys, want int) (int, error) {
	n := want
	if n == 0 {
		n = DefaultPartitions
	}
	// HSETNX makes the first migrator's count the bus's, even under a race.
	if err := rdb.HSetNX(ctx, keys.Meta(), "partitions", n).Err(); err != nil {
		return 0, fmt.Errorf("setting partition count: %w", err)
	}
	got, err := streams.Partitions(ctx, rdb, keys)
	if err != nil {
		return 0, err
	}
	if want != 0 && got != want {
		return 0, fmt.Errorf("%w: %s has %d partitions, --partitions asks for %d", ErrPartitionMismatch, keys.Meta(), got, want)
	}
	return got, nil
}

func createPartitions(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys, n int) error {
	for p := 0; p < n; p++ {
		if err := CreatePartition(ctx, rdb, keys, p); err != nil {
			return err
		}
	}
	return nil
}

// CreatePartition creates partition p's ingress stream and consumer group
// (from the stream's start, so entries added before the bus existed are
// delivered) and its epoch when they are missing.
func CreatePartition(ctx context.Context, rdb redis.Cmdable, keys streams.Keys, p int) error {
	err := rdb.XGroupCreateMkStream(ctx, keys.Ingress(p), streams.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("creating group of partition %d: %w", p, err)
	}
	if err := rdb.HSetNX(ctx, keys.PartitionMeta(p), "epoch", streams.NewEpoch()).Err(); err != nil {
		return fmt.Errorf("creating epoch of partition %d: %w", p, err)
	}
	return nil
}
