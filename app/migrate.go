package app

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

func runMigrate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "migrate [flags]", stdout, stderr)
	var c common
	c.register(fs)
	partitions := fs.Int("partitions", migrations.DefaultPartitions, "partition count of a new bus; fixed once the bus exists")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	explicit := 0
	if wasSet(fs, "partitions") {
		explicit = *partitions
	}
	var applied, n int
	err := c.withRedis(time.Minute, func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) error {
		var err error
		if applied, err = migrations.Run(ctx, rdb, keys, explicit); err != nil {
			return err
		}
		n, err = streams.Partitions(ctx, rdb, keys)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bus %q: %d partitions, schema %d (%d migrations applied now)\n", c.prefix, n, migrations.Latest(), applied)
	return nil
}
