package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Partitions reads the partition count of the bus from <prefix>:meta.
func Partitions(ctx context.Context, rdb redis.Cmdable, keys Keys) (int, error) {
	s, err := rdb.HGet(ctx, keys.Meta(), "partitions").Result()
	if errors.Is(err, redis.Nil) {
		return 0, ErrNotMigrated
	}
	if err != nil {
		return 0, fmt.Errorf("reading partition count: %w", err)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("streams: bad partition count %q in %s", s, keys.Meta())
	}
	return n, nil
}

// Publisher appends events to the ingress stream of their partition, for
// callers that prefer not to hash topics themselves.
type Publisher struct {
	rdb     redis.Cmdable
	keys    Keys
	maxData int
	n       atomic.Int64 // cached partition count; fixed once migrated
}

// NewPublisher returns a Publisher. maxData is the payload limit in bytes
// (zero means DefaultMaxData).
func NewPublisher(rdb redis.Cmdable, keys Keys, maxData int) *Publisher {
	if maxData <= 0 {
		maxData = DefaultMaxData
	}
	return &Publisher{rdb: rdb, keys: keys, maxData: maxData}
}

// Publish appends one event and returns its stream ID.
func (p *Publisher) Publish(ctx context.Context, topic string, data []byte) (string, error) {
	return p.PublishDeadline(ctx, topic, data, 0)
}

// PublishDeadline appends one event that some subject must acknowledge
// within deadline (whole milliseconds; zero for no deadline), or the
// partition's owner escalates it to <prefix>:escalations.
func (p *Publisher) PublishDeadline(ctx context.Context, topic string, data []byte, deadline time.Duration) (string, error) {
	if err := ValidateTopic(topic); err != nil {
		return "", err
	}
	if len(data) > p.maxData {
		return "", ErrTooLarge
	}
	values := []any{"topic", topic, "data", data}
	if deadline != 0 {
		ms := deadline.Milliseconds()
		if ms < 1 || ms > MaxDeadline || deadline%time.Millisecond != 0 {
			return "", ErrBadDeadline
		}
		values = append(values, "deadline", ms)
	}
	n, err := p.partitions(ctx)
	if err != nil {
		return "", err
	}
	id, err := p.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: p.keys.Ingress(Partition(topic, n)),
		Values: values,
	}).Result()
	if err != nil {
		return "", fmt.Errorf("publishing to %s: %w", topic, err)
	}
	return id, nil
}

func (p *Publisher) partitions(ctx context.Context) (int, error) {
	if n := p.n.Load(); n > 0 {
		return int(n), nil
	}
	n, err := Partitions(ctx, p.rdb, p.keys)
	if err != nil {
		return 0, err
	}
	p.n.Store(int64(n))
	return n, nil
}
