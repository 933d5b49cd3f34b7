package app

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/streams"
)

// redisErrors counts the Redis commands of the clients it hooks that failed
// (bus.RedisFailed): timeouts, refused or cut connections, a server
// loading, read-only or out of memory, a cluster down; not the replies the
// bus expects and handles.
type redisErrors struct{ n atomic.Uint64 }

// DialHook counts nothing: a command whose connection could not be dialled
// fails, and is counted once, as a command.
func (e *redisErrors) DialHook(next redis.DialHook) redis.DialHook { return next }

func (e *redisErrors) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		e.count(cmd, err)
		return err
	}
}

func (e *redisErrors) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			e.count(cmd, cmd.Err())
		}
		return err
	}
}

// count counts err, the outcome of cmd, if it failed.
// The optional commands of a connection's handshake (HELLO, CLIENT
// SETINFO) are refused by older servers and ignored by go-redis: not
// failures.
func (e *redisErrors) count(cmd redis.Cmder, err error) {
	if cmd.Name() == "hello" || cmd.Name() == "client" {
		return
	}
	if bus.RedisFailed(err) {
		e.n.Add(1)
	}
}

// ingressLag is the gauge vector wsbus_bus_ingress_lag: for each partition
// this node owns, the ingress entries not applied yet: those its consumer
// group has not read (XINFO GROUPS lag, Redis 7) and those read and not
// acknowledged (pending), read from Redis at each scrape. A partition
// whose lag Redis cannot tell has no sample.
type ingressLag struct {
	rdb   redis.UniversalClient
	keys  streams.Keys
	owned func() []int // the partitions this node owns (Owner.Partitions)
	desc  *prometheus.Desc
}

func newIngressLag(rdb redis.UniversalClient, keys streams.Keys, owned func() []int) *ingressLag {
	return &ingressLag{rdb: rdb, keys: keys, owned: owned, desc: prometheus.NewDesc("wsbus_bus_ingress_lag",
		"Ingress entries of a partition this node owns that are not applied yet (moved to history and published).",
		[]string{"partition"}, nil)}
}

func (l *ingressLag) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

func (l *ingressLag) Collect(ch chan<- prometheus.Metric) {
	ps := l.owned()
	if len(ps) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cmds := make([]*redis.XInfoGroupsCmd, len(ps))
	pipe := l.rdb.Pipeline()
	for i, p := range ps {
		cmds[i] = pipe.XInfoGroups(ctx, l.keys.Ingress(p))
	}
	_, _ = pipe.Exec(ctx) // a partition that failed is left out of this scrape
	for i, p := range ps {
		groups, err := cmds[i].Result()
		if err != nil {
			continue
		}
		for _, g := range groups {
			// Lag is -1 when Redis cannot tell (entries were deleted
			// from the stream): no sample rather than a wrong one.
			if g.Name == streams.Group && g.Lag >= 0 {
				ch <- prometheus.MustNewConstMetric(l.desc, prometheus.GaugeValue, float64(g.Lag+g.Pending), strconv.Itoa(p))
			}
		}
	}
}
