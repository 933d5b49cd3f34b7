package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// OwnerConfig configures an Owner. Zero values mean the documented defaults.
type OwnerConfig struct {
	// Redis is the bus's Redis. Required. Each owned partition holds one
	// connection in a blocking read: size the pool for it.
	Redis redis.UniversalClient
	// Keys names the bus's keys.
	Keys streams.Keys
	// Partitions is the bus's partition count (<prefix>:meta). Required.
	Partitions int
	// Node names this gateway node: the lease owner and consumer name.
	Node string
	// LeaseTTL is how long a lease outlives its owner. Zero value means
	// 5 s: a dead owner's partitions move within it.
	LeaseTTL time.Duration
	// Batch is how many ingress entries are read and applied at once. Zero
	// value means 100: one Redis round trip each, little added latency.
	Batch int
	// Block bounds one blocking read, so a lost lease or shutdown is noticed
	// promptly. Zero value means 1 s.
	Block time.Duration
	// MaxData is the payload limit; bigger entries are dead-lettered. Zero
	// value means streams.DefaultMaxData (64 KiB).
	MaxData int
	// HistoryLen is about how many entries each topic's history keeps. Zero
	// value means 1000.
	HistoryLen int
	// HistoryTTL expires a topic's history after this long without events.
	// Zero value means 24 h.
	HistoryTTL time.Duration
	// Retention is how long ingress entries are kept after they are
	// processed. Zero value means 24 h.
	Retention time.Duration
	// Logger receives pipeline errors. Zero value means slog.Default().
	Logger *slog.Logger
}

func (c OwnerConfig) withDefaults() (OwnerConfig, error) {
	if c.Redis == nil || c.Partitions <= 0 || c.Node == "" {
		return c, errors.New("bus: OwnerConfig needs Redis, Partitions and Node")
	}
	if strings.ContainsAny(c.Node, " \t\r\n") {
		return c, fmt.Errorf("bus: node ID %q must not contain spaces", c.Node)
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.Batch <= 0 {
		c.Batch = 100
	}
	if c.Block <= 0 {
		c.Block = time.Second
	}
	if c.MaxData <= 0 {
		c.MaxData = streams.DefaultMaxData
	}
	if c.HistoryLen <= 0 {
		c.HistoryLen = 1000
	}
	if c.HistoryTTL <= 0 {
		c.HistoryTTL = 24 * time.Hour
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Owner leases partitions and runs the pipeline of each one it holds.
type Owner struct {
	cfg   OwnerConfig
	stats ownerCounters

	mu    sync.Mutex
	owned map[int]*lease
}

// lease is one held partition lease.
type lease struct {
	p      int
	value  string // "<node> <token>", the owner key's content
	cancel context.CancelFunc
	done   chan struct{}
}

// NewOwner returns an Owner; Run starts it.
func NewOwner(cfg OwnerConfig) (*Owner, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Owner{cfg: cfg, owned: make(map[int]*lease)}, nil
}

// Run acquires and renews leases until ctx is done, then stops every
// pipeline and releases its leases so another node can take over at once.
func (o *Owner) Run(ctx context.Context) error {
	tick := time.NewTicker(o.cfg.LeaseTTL / 3)
	defer tick.Stop()
	for {
		o.renew(ctx)
		o.acquire(ctx)
		select {
		case <-ctx.Done():
			o.releaseAll()
			return nil
		case <-tick.C:
		}
	}
}

// acquire takes every free partition. Balancing over a fleet decides
// which partitions to want; a single node wants them all.
func (o *Owner) acquire(ctx context.Context) {
	ttl := strconv.FormatInt(o.cfg.LeaseTTL.Milliseconds(), 10)
	for p := 0; p < o.cfg.Partitions && ctx.Err() == nil; p++ {
		o.mu.Lock()
		_, held := o.owned[p]
		o.mu.Unlock()
		if held {
			continue
		}
		keys := []string{o.cfg.Keys.Owner(p), o.cfg.Keys.PartitionMeta(p)}
		token, err := acquireScript.Run(ctx, o.cfg.Redis, keys, o.cfg.Node, ttl).Int64()
		if errors.Is(err, redis.Nil) {
			continue // another node holds it
		}
		if err != nil {
			if ctx.Err() == nil {
				o.cfg.Logger.Warn("acquiring partition lease", "partition", p, "err", err)
			}
			return
		}
		o.start(ctx, p, o.cfg.Node+" "+strconv.FormatInt(token, 10))
	}
}

func (o *Owner) start(ctx context.Context, p int, value string) {
	pctx, cancel := context.WithCancel(ctx)
	l := &lease{p: p, value: value, cancel: cancel, done: make(chan struct{})}
	o.mu.Lock()
	o.owned[p] = l
	o.mu.Unlock()
	o.stats.acquired.Add(1)
	go func() {
		defer close(l.done)
		err := o.runPartition(pctx, l)
		if err != nil && pctx.Err() == nil {
			o.cfg.Logger.Warn("partition pipeline stopped", "partition", p, "err", err)
		}
		o.drop(l)
	}()
}

// drop forgets a lease whose pipeline ended, so it can be acquired again.
func (o *Owner) drop(l *lease) {
	o.mu.Lock()
	if o.owned[l.p] == l {
		delete(o.owned, l.p)
	}
	o.mu.Unlock()
	l.cancel()
}

// renew extends every held lease in one pipeline; a lease found lost stops
// its partition.
func (o *Owner) renew(ctx context.Context) {
	o.mu.Lock()
	leases := make([]*lease, 0, len(o.owned))
	for _, l := range o.owned {
		leases = append(leases, l)
	}
	o.mu.Unlock()
	if len(leases) == 0 {
		return
	}
	ttl := o.cfg.LeaseTTL.Milliseconds()
	pipe := o.cfg.Redis.Pipeline()
	cmds := make([]*redis.Cmd, len(leases))
	for i, l := range leases {
		cmds[i] = renewScript.Run(ctx, pipe, []string{o.cfg.Keys.Owner(l.p)}, l.value, ttl)
	}
	_, _ = pipe.Exec(ctx)
	for i, l := range leases {
		n, err := cmds[i].Int64()
		if err == nil && n == 1 {
			continue
		}
		if err != nil && isNoScript(err) {
			// EVALSHA in a pipeline does not fall back to EVAL; load it once.
			_ = renewScript.Load(ctx, o.cfg.Redis).Err()
			continue
		}
		if err == nil {
			o.cfg.Logger.Warn("partition lease lost", "partition", l.p)
			o.stats.lost.Add(1)
			l.cancel()
		}
	}
}

func (o *Owner) releaseAll() {
	o.mu.Lock()
	leases := make([]*lease, 0, len(o.owned))
	for _, l := range o.owned {
		leases = append(leases, l)
	}
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, l := range leases {
		l.cancel()
		<-l.done
		_ = releaseScript.Run(ctx, o.cfg.Redis, []string{o.cfg.Keys.Owner(l.p)}, l.value).Err()
	}
}

// Owned returns how many partitions this node holds.
func (o *Owner) Owned() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.owned)
}

// OwnerStats is a snapshot of an Owner's counters.
type OwnerStats struct {
	Owned        int    // partitions held now
	Acquired     uint64 // leases taken
	Lost         uint64 // leases found lost
	Delivered    uint64 // entries added to topic history and published
	DeadLettered uint64 // entries refused to the dead-letter stream
	Forwarded    uint64 // entries moved to their right partition
}

type ownerCounters struct {
	acquired, lost, delivered, deadLettered, forwarded atomic.Uint64
}

// Stats returns the current counters.
func (o *Owner) Stats() OwnerStats {
	return OwnerStats{
		Owned:        o.Owned(),
		Acquired:     o.stats.acquired.Load(),
		Lost:         o.stats.lost.Load(),
		Delivered:    o.stats.delivered.Load(),
		DeadLettered: o.stats.deadLettered.Load(),
		Forwarded:    o.stats.forwarded.Load(),
	}
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func isLeaseLost(err error) bool {
	return err != nil && strings.Contains(err.Error(), "WSBUSLEASE")
}
