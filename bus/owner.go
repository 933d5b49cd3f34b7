package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// LeaseRedis, when set, carries the node's lease traffic: its
	// heartbeat and renewals, the fleet reads, acquisitions and releases.
	// Give it a client of its own on the same Redis (two connections are
	// enough: Run's loop and the renewals' goroutine), so that a renewal
	// never waits for a connection behind the reads that fill Redis's
	// client's pools in a resume storm, and lapses while its owner holds
	// it. A node whose Redis client is starved so keeps its leases while
	// its pipelines wait: a lease says the node is alive, not that it
	// keeps up. Behind Sentinel or in a Cluster the two clients follow a
	// change of master each on its own; for a moment they may disagree,
	// and the leases' fencing still refuses a write under a lost lease.
	// Zero value means Redis.
	LeaseRedis redis.UniversalClient
	// Keys names the bus's keys.
	Keys streams.Keys
	// Partitions is the bus's partition count (<prefix>:meta). Required.
	Partitions int
	// Node names this gateway node: the lease owner and consumer name.
	Node string
	// LeaseTTL is how long a lease outlives its owner. Zero value means
	// 5 s: a dead owner's partitions move within it.
	LeaseTTL time.Duration
	// Tick is how often the node heartbeats, renews its leases and
	// rebalances. Zero value means LeaseTTL/3, at most 500 ms: a dead
	// node's partitions are taken within LeaseTTL plus one tick.
	Tick time.Duration
	// Batch is how many ingress entries are read and applied at once. Zero
	// value means 100: one Redis round trip each, little added latency.
	Batch int
	// Block bounds one blocking read, so a lost lease or shutdown is noticed
	// promptly; an idle partition also checks its consumer group is where
	// it was left (see ensureScript) once per Block. Zero value means 1 s.
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
	// ApplyTime, when set, is called after each batch of ingress entries
	// is applied (history, live, dead letters, deadlines), with how long
	// the batch took from its decoding to Redis's answer. It runs on the
	// partition's pipeline: keep it quick (a histogram's Observe).
	ApplyTime func(time.Duration)
}

func (c OwnerConfig) withDefaults() (OwnerConfig, error) {
	if c.Redis == nil || c.Partitions <= 0 || c.Node == "" {
		return c, errors.New("bus: OwnerConfig needs Redis, Partitions and Node")
	}
	if strings.ContainsAny(c.Node, " \t\r\n") {
		return c, fmt.Errorf("bus: node ID %q must not contain spaces", c.Node)
	}
	if c.LeaseRedis == nil {
		c.LeaseRedis = c.Redis
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.Tick <= 0 {
		c.Tick = min(c.LeaseTTL/3, 500*time.Millisecond)
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

	pipelines sync.WaitGroup // one per lease started; Run waits for all

	// applied is, by partition, the last entry this node applied and the
	// epoch it was applied under: if the ingress is later found below it
	// under the same epoch, the partition's newest data was lost. Only
	// the partition's pipeline touches its mark, and one pipeline of a
	// partition runs at a time (o.mu orders one's end and the next start).
	applied []mark

	testHookStopping func() // when set, Run calls it once ctx is done, before releaseAll
}

// mark is the last entry applied to a partition, under an epoch.
type mark struct {
	epoch string
	id    streams.ID
}

// lease is one held partition lease.
type lease struct {
	p      int
	value  string // "<node> <token>", the owner key's content
	cancel context.CancelFunc
	ended  <-chan struct{} // closed by cancel: handed over, lost, or Run ending
	done   chan struct{}
	epoch  string // the partition's epoch, as ensure last found it
	// nextDue is when the partition's next deadline is due, unix ms; -1
	// for none, 0 until read. Only the partition's pipeline touches it.
	nextDue int64

	scratch []byte // event encoding buffer of the partition's pipeline, reused per batch
	// forwarded holds the IDs of the entries of the batch being applied
	// that were forwarded to their partition, so that a batch the apply
	// script refused (and that is read again) does not forward them twice.
	// Only the partition's pipeline touches it.
	forwarded map[string]struct{}
}

// NewOwner returns an Owner; Run starts it.
func NewOwner(cfg OwnerConfig) (*Owner, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Owner{cfg: cfg, owned: make(map[int]*lease), applied: make([]mark, cfg.Partitions)}, nil
}

// Run heartbeats, renews leases and rebalances partitions over the live
// nodes until ctx is done, then stops every pipeline, releases its leases
// and leaves, so the rest of the fleet takes over at once.
//
// The heartbeat and renewals run on a goroutine of their own (keepAlive),
// one round trip a tick, so that a slow rebalance (reading the fleet,
// taking partitions one by one) never holds a renewal back: when Redis is
// slow to answer, a node that did them in turn renewed only every few
// round trips and lost its leases to the TTL while holding them.
func (o *Owner) Run(ctx context.Context) error {
	// Renewals run in pipelines, where EVALSHA cannot fall back to EVAL.
	if err := renewScript.Load(ctx, o.cfg.LeaseRedis).Err(); err != nil && ctx.Err() == nil {
		o.cfg.Logger.Warn("loading the lease renewal script", "err", err)
	}
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		o.keepAlive(ctx)
	}()
	tick := time.NewTicker(o.cfg.Tick)
	defer tick.Stop()
	for {
		o.rebalance(ctx)
		select {
		case <-ctx.Done():
			<-kept // no heartbeat after leave
			if o.testHookStopping != nil {
				o.testHookStopping()
			}
			o.releaseAll()
			o.leave()
			o.pipelines.Wait() // those that ended by themselves too
			return nil
		case <-tick.C:
		}
	}
}

// keepAlive heartbeats and renews every held lease once a tick, or as
// soon as the last round trip is answered when that takes longer.
func (o *Owner) keepAlive(ctx context.Context) {
	tick := time.NewTicker(o.cfg.Tick)
	defer tick.Stop()
	for {
		o.renew(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// rebalance hands over the partitions this node should no longer own and
// takes the free ones it should.
func (o *Owner) rebalance(ctx context.Context) {
	v, err := o.view(ctx)
	if err != nil {
		if ctx.Err() == nil {
			o.cfg.Logger.Warn("reading the fleet's state", "err", err)
		}
		return
	}
	want := assign(o.cfg.Partitions, v.nodes, v.owners)
	var give []*lease
	for p, node := range want {
		o.mu.Lock()
		l, held := o.owned[p]
		o.mu.Unlock()
		switch {
		case held && node != o.cfg.Node:
			l.cancel() // all stop at once; handOver waits for each
			give = append(give, l)
		case !held && node == o.cfg.Node && ctx.Err() == nil:
			if owner, taken := v.owners[p]; !taken || owner == o.cfg.Node {
				o.acquire(ctx, p)
			}
		}
	}
	for _, l := range give {
		o.handOver(l)
	}
}

// acquire takes partition p if its lease is free (or already ours).
func (o *Owner) acquire(ctx context.Context, p int) {
	ttl := strconv.FormatInt(o.cfg.LeaseTTL.Milliseconds(), 10)
	keys := []string{o.cfg.Keys.Owner(p), o.cfg.Keys.PartitionMeta(p)}
	token, err := acquireScript.Run(ctx, o.cfg.LeaseRedis, keys, o.cfg.Node, ttl).Int64()
	if classify(err) == kindNil {
		return // another node holds it still
	}
	if err != nil {
		if ctx.Err() == nil {
			o.cfg.Logger.Warn("acquiring partition lease", "partition", p, "err", err)
		}
		return
	}
	o.start(ctx, p, o.cfg.Node+" "+strconv.FormatInt(token, 10))
}

// handOver stops a partition's pipeline (what it read and did not apply
// stays pending for the next owner) and releases its lease.
func (o *Owner) handOver(l *lease) {
	l.cancel()
	<-l.done
	o.cfg.Logger.Info("handing over partition", "partition", l.p)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := releaseScript.Run(ctx, o.cfg.LeaseRedis, []string{o.cfg.Keys.Owner(l.p)}, l.value).Err(); err != nil {
		o.cfg.Logger.Warn("releasing partition lease", "partition", l.p, "err", err)
	}
	o.stats.handedOver.Add(1)
}

func (o *Owner) start(ctx context.Context, p int, value string) {
	pctx, cancel := context.WithCancel(ctx)
	l := &lease{p: p, value: value, cancel: cancel, ended: pctx.Done(), done: make(chan struct{})}
	o.mu.Lock()
	o.owned[p] = l
	o.mu.Unlock()
	o.stats.acquired.Add(1)
	o.pipelines.Add(1) // only Run's goroutine starts pipelines, and waits for them
	go func() {
		defer o.pipelines.Done()
		defer close(l.done)
		err := o.runPartition(pctx, l)
		if err != nil && pctx.Err() == nil {
			o.cfg.Logger.Warn("partition pipeline stopped", "partition", p, "err", err)
		}
		if ctx.Err() == nil {
			o.drop(l)
		} // else Run is stopping: the lease stays for releaseAll to release
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

// renew heartbeats and extends every held lease in one pipeline; a lease
// found lost stops its partition.
func (o *Owner) renew(ctx context.Context) {
	o.mu.Lock()
	leases := make([]*lease, 0, len(o.owned))
	for _, l := range o.owned {
		leases = append(leases, l)
	}
	o.mu.Unlock()
	ttl := o.cfg.LeaseTTL.Milliseconds()
	pipe := o.cfg.LeaseRedis.Pipeline()
	o.heartbeat(ctx, pipe)
	cmds := make([]*redis.Cmd, len(leases))
	for i, l := range leases {
		cmds[i] = renewScript.Run(ctx, pipe, []string{o.cfg.Keys.Owner(l.p)}, l.value, ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil && classify(err) != kindNoScript && ctx.Err() == nil {
		o.cfg.Logger.Warn("heartbeat and lease renewal", "leases", len(leases), "err", err)
	}
	loaded := false
	for i, l := range leases {
		n, err := cmds[i].Int64()
		switch classify(err) {
		case kindNone:
			if n != 1 && !l.stopping() {
				o.cfg.Logger.Warn("partition lease lost", "partition", l.p)
				o.stats.lost.Add(1)
				l.cancel()
			}
		case kindNoScript:
			// EVALSHA in a pipeline does not fall back to EVAL; load it once.
			if !loaded {
				loaded = true
				_ = renewScript.Load(ctx, o.cfg.LeaseRedis).Err()
			}
		}
	}
}

// stopping reports whether the lease's pipeline was told to stop: a
// renewal that finds it gone found it handed over or released, not lost.
func (l *lease) stopping() bool {
	select {
	case <-l.ended:
		return true
	default:
		return false
	}
}

// releaseAll stops every pipeline and releases its lease. Run calls it
// once ctx is done: the pipelines that stopped for that meanwhile are
// still in owned (see start).
func (o *Owner) releaseAll() {
	o.mu.Lock()
	leases := make([]*lease, 0, len(o.owned))
	for _, l := range o.owned {
		leases = append(leases, l)
	}
	o.mu.Unlock()
	for _, l := range leases {
		l.cancel()
	}
	for _, l := range leases {
		<-l.done
	}
	// One round trip for all: EVAL, which needs no script loaded.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pipe := o.cfg.LeaseRedis.Pipeline()
	for _, l := range leases {
		releaseScript.Eval(ctx, pipe, []string{o.cfg.Keys.Owner(l.p)}, l.value)
	}
	if len(leases) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			o.cfg.Logger.Warn("releasing partition leases: those not released expire at --lease-ttl", "leases", len(leases), "err", err)
		}
	}
	for _, l := range leases {
		o.drop(l)
	}
}

// Owned returns how many partitions this node holds.
func (o *Owner) Owned() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.owned)
}

// Partitions returns the partitions this node holds, in order.
func (o *Owner) Partitions() []int {
	o.mu.Lock()
	ps := make([]int, 0, len(o.owned))
	for p := range o.owned {
		ps = append(ps, p)
	}
	o.mu.Unlock()
	slices.Sort(ps)
	return ps
}

// OwnerStats is a snapshot of an Owner's counters.
type OwnerStats struct {
	Owned        int    // partitions held now
	Acquired     uint64 // leases taken
	Lost         uint64 // leases found lost
	Delivered    uint64 // entries added to topic history and published
	DeadLettered uint64 // entries refused to the dead-letter stream
	Forwarded    uint64 // entries moved to their right partition
	HandedOver   uint64 // partitions given up to rebalance
	Epochs       uint64 // partition epochs renewed: data found lost
	Escalations  uint64 // events with a deadline escalated, unacknowledged
}

type ownerCounters struct {
	acquired, lost, delivered, deadLettered, forwarded, handedOver, epochs, escalations atomic.Uint64
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
		HandedOver:   o.stats.handedOver.Load(),
		Epochs:       o.stats.epochs.Load(),
		Escalations:  o.stats.escalations.Load(),
	}
}
