package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

func runPublish(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("publish", "publish [flags] TOPIC DATA   (DATA \"-\" reads standard input)", stdout, stderr)
	var c common
	c.register(fs)
	deadline := fs.Duration("deadline", 0, "a subject must acknowledge the event within this long (e.g. 30s, whole milliseconds), or it is escalated to <prefix>:escalations (0: no deadline)")
	maxData := fs.Int("max-data", streams.DefaultMaxData, "largest payload in bytes, as the gateways' --max-data: a larger one is refused here instead of dead-lettered by them")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if err := flagAfterArgs(fs); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errUsage
	}
	if *maxData < 1 {
		return fmt.Errorf("--max-data %d: want at least 1 byte", *maxData)
	}
	topic, data := fs.Arg(0), []byte(fs.Arg(1))
	if fs.Arg(1) == "-" {
		var err error
		if data, err = io.ReadAll(io.LimitReader(os.Stdin, int64(*maxData)+1)); err != nil {
			return fmt.Errorf("reading standard input: %w", err)
		}
	}
	var id string
	err := c.withRedis(10*time.Second, func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) error {
		var err error
		id, err = streams.NewPublisher(rdb, keys, *maxData).PublishDeadline(ctx, topic, data, *deadline)
		return err
	})
	switch {
	case errors.Is(err, streams.ErrBadTopic):
		return fmt.Errorf("topic %q: want 1-%d bytes of UTF-8 without spaces or control characters", topic, streams.MaxTopicLen)
	case errors.Is(err, streams.ErrTooLarge):
		return fmt.Errorf("data is larger than %d bytes (--max-data)", *maxData)
	case errors.Is(err, streams.ErrBadDeadline):
		return fmt.Errorf("--deadline %v: want whole milliseconds from 1ms to %v (30 days), such as 500ms or 30s", *deadline, streams.MaxDeadline*time.Millisecond)
	case err != nil:
		return err
	}
	fmt.Fprintln(stdout, id)
	return nil
}
