package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

func runPublish(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("publish", "publish [flags] TOPIC DATA   (DATA \"-\" reads standard input)", stderr)
	var c common
	c.register(fs)
	deadline := fs.Duration("deadline", 0, "a subject must acknowledge the event within this long (e.g. 30s, whole milliseconds), or it is escalated to <prefix>:escalations (0: no deadline)")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errUsage
	}
	topic, data := fs.Arg(0), []byte(fs.Arg(1))
	if fs.Arg(1) == "-" {
		var err error
		if data, err = io.ReadAll(io.LimitReader(os.Stdin, streams.DefaultMaxData+1)); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
	}
	var id string
	err := c.withRedis(10*time.Second, func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) error {
		var err error
		id, err = streams.NewPublisher(rdb, keys, 0).PublishDeadline(ctx, topic, data, *deadline)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, id)
	return nil
}
