package app

// The continuity canary checks every partition end to end, as a client
// sees it. Every --canary-interval each node XADDs one plain ingress entry,
// as any service would, to the canary topic of each partition it owns, and
// it reads the canary topics of all partitions back through its own
// WebSocket path: a Go client connected to its own listen address,
// admitted by a per-process key (bus.CanaryScheme), resuming like any
// client. What it sees is in the wsbus_canary_* metrics:
//
//   - every canary event received: its latency from the time in its ID;
//   - events known lost: a hole in a canary topic's seq (or a resume
//     answered recovered:false, with missed), and events this node
//     published that did not arrive within --canary-timeout, or that a
//     later event of their partition overtook. An event of this node's
//     that falls in a hole is counted once: the overtaken ones count only
//     beyond the hole just reported.
//
// An event counted lost for its timeout that arrives after all counts as
// late as well; lost is not taken back. Canary topics start with
// bus.CanaryPrefix, which clients cannot subscribe to: they never see it.

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbus/wsbus/bus"
	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/streams"
)

// canaryTopics returns the canary topic of each partition of a bus of n
// partitions: the first bus.CanaryPrefix<k> (k = 0, 1, ...) that hashes to
// it, so every node agrees without asking.
func canaryTopics(n int) []string {
	topics := make([]string, n)
	for k, found := 0, 0; found < n; k++ {
		name := bus.CanaryPrefix + strconv.Itoa(k)
		if p := streams.Partition(name, n); topics[p] == "" {
			topics[p] = name
			found++
		}
	}
	return topics
}

// canaryConfig configures a canary.
type canaryConfig struct {
	// Interval between two rounds of canary events; 0 turns the canary
	// off (its metrics stay, at zero).
	Interval time.Duration
	// Timeout: an event of this node's that has not arrived this long
	// after it was published, or after its partition's subscription last
	// took effect, counts as lost.
	Timeout time.Duration
	// Node is this node's ID, put in the events' data.
	Node string
	// URL is the node's own WebSocket endpoint, ws://ADDR/v1/ws.
	URL string
	// Key is the gateway's bus.GatewayConfig.CanaryKey.
	Key string
	// Partitions is the bus's partition count.
	Partitions int
	// MaxSubscriptions is the gateway's limit of topics per connection:
	// the canary opens as many connections as it takes.
	MaxSubscriptions int
	// Publish appends an event, as streams.Publisher does.
	Publish func(ctx context.Context, topic string, data []byte) (string, error)
	// Owned returns the partitions this node owns now.
	Owned func() []int
	// Logger receives losses and publish errors.
	Logger *slog.Logger
}

// canary is a node's continuity canary. start runs it; stop ends it and
// waits for every goroutine it started.
type canary struct {
	cfg    canaryConfig
	topics []string       // by partition
	part   map[string]int // partition by topic
	data   []byte         // of every event this node publishes

	latency              prometheus.Histogram
	lost, received, late *prometheus.CounterVec
	lostBy, receivedBy   []prometheus.Counter // by partition
	lateBy               []prometheus.Counter

	mu sync.Mutex
	// since is when the subscription of each partition last took effect;
	// zero while it is not in effect (its events' clocks stop).
	since []time.Time
	// pending holds, by partition and in ID order, the events this node
	// published that have not arrived; overdue those counted lost for
	// their timeout, kept a while to count them late if they arrive.
	pending, overdue [][]sentEvent
	// early holds events of this node's that arrived before their
	// publish had returned, so pending must not await them.
	early map[sentKey]time.Time
	// credit is, by partition, how many events the hole reported last
	// skipped: this node's events overtaken at the next arrival may be
	// among them, and count only beyond it.
	credit []uint64
	views  []canaryStatus // by partition, for the status page
	open   int            // connections open

	cancel  context.CancelFunc
	clients []*wsbus.Client
	wg      sync.WaitGroup
}

// sentEvent is an event this node published, and when.
type sentEvent struct {
	id streams.ID
	at time.Time
}

// sentKey names an event of partition p.
type sentKey struct {
	p  int
	id streams.ID
}

// canaryBuckets are the canary's latency buckets: milliseconds on a
// healthy bus, seconds when a partition's owner moves.
var canaryBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newCanary(cfg canaryConfig) *canary {
	data, _ := json.Marshal(map[string]string{"node": cfg.Node})
	n := cfg.Partitions
	c := &canary{
		cfg: cfg, topics: canaryTopics(n), part: make(map[string]int, n), data: data,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wsbus_canary_latency_seconds",
			Help:    "Canary events received through this node's own WebSocket path: from the time in the event's ID to its arrival.",
			Buckets: canaryBuckets,
		}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsbus_canary_received_total",
			Help: "Canary events received through this node's own WebSocket path, by partition.",
		}, []string{"partition"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsbus_canary_lost_total",
			Help: "Canary events known lost, by partition: holes in a canary topic's seq, and events this node published that did not arrive within --canary-timeout or were overtaken.",
		}, []string{"partition"}),
		late: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsbus_canary_late_total",
			Help: "Canary events of this node's that arrived after they were counted lost for --canary-timeout, by partition.",
		}, []string{"partition"}),
		since:   make([]time.Time, n),
		pending: make([][]sentEvent, n),
		overdue: make([][]sentEvent, n),
		early:   map[sentKey]time.Time{},
		credit:  make([]uint64, n),
		views:   make([]canaryStatus, n),
	}
	for p, topic := range c.topics {
		c.part[topic] = p
		label := strconv.Itoa(p)
		// Made now, so every partition shows at zero.
		c.receivedBy = append(c.receivedBy, c.received.WithLabelValues(label))
		c.lostBy = append(c.lostBy, c.lost.WithLabelValues(label))
		c.lateBy = append(c.lateBy, c.late.WithLabelValues(label))
	}
	return c
}

// collectors returns the canary's metrics.
func (c *canary) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.latency, c.received, c.lost, c.late}
}

// view returns the canary's view of partition p: events lost, and the
// latency and arrival of its last event.
func (c *canary) view(p int) canaryStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p < 0 || p >= len(c.views) {
		return canaryStatus{}
	}
	return c.views[p]
}

// addLostLocked counts n events of partition p as lost.
func (c *canary) addLostLocked(p int, n uint64) {
	c.lostBy[p].Add(float64(n))
	c.views[p].Lost += n
}

// connections returns how many of the node's WebSocket connections are
// the canary's.
func (c *canary) connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}

// start connects the canary's clients and starts publishing; nothing
// when it is off.
func (c *canary) start() {
	if c.cfg.Interval <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	per := max(c.cfg.MaxSubscriptions, 1)
	for first := 0; first < len(c.topics); first += per {
		parts := make([]int, 0, per)
		for p := first; p < min(first+per, len(c.topics)); p++ {
			parts = append(parts, p)
		}
		cl := c.client(parts)
		c.clients = append(c.clients, cl)
		c.wg.Go(func() { _ = cl.Run(ctx) })
	}
	c.wg.Go(func() { c.run(ctx) })
}

// stop closes the canary's connections and waits for its goroutines.
func (c *canary) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	for _, cl := range c.clients {
		cl.Close() // closes its connection at once: a drain does not wait on it
	}
	c.wg.Wait()
}

// client returns a client of the canary topics of parts.
func (c *canary) client(parts []int) *wsbus.Client {
	open := false // guarded by c.mu
	cl := wsbus.New(c.cfg.URL, wsbus.Options{
		Header:     http.Header{"Authorization": {bus.CanaryScheme + " " + c.cfg.Key}},
		MaxBackoff: time.Second,
		OnState:    func(s wsbus.State, err error) { c.state(parts, &open, s, err) },
		OnError: func(m wsbus.Message) {
			c.cfg.Logger.Debug("canary subscription refused", "topic", m.Topic, "code", m.Code, "message", m.Message)
		},
	})
	for _, p := range parts {
		cl.Subscribe(c.topics[p], wsbus.SubscribeOptions{OnEvent: c.event, OnSubscribed: c.subscribed, OnGap: c.gap})
	}
	return cl
}

// state keeps the count of open connections, and stops the clocks of the
// partitions of a connection that ended.
func (c *canary) state(parts []int, open *bool, s wsbus.State, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case s == wsbus.Open && !*open:
		*open = true
		c.open++
	case s != wsbus.Open && *open:
		*open = false
		c.open--
		for _, p := range parts {
			c.since[p] = time.Time{}
		}
		if err != nil {
			c.cfg.Logger.Debug("canary connection ended", "err", err)
		}
	}
}

// subscribed starts the clock of a partition's events.
func (c *canary) subscribed(s wsbus.Subscribed) {
	if p, ok := c.part[s.Topic]; ok {
		c.mu.Lock()
		c.since[p] = time.Now()
		c.mu.Unlock()
	}
}

// gap counts the events a hole in a canary topic skipped.
func (c *canary) gap(g wsbus.Gap) {
	p, ok := c.part[g.Topic]
	if !ok {
		return
	}
	var n uint64
	switch {
	case g.Missed != nil:
		n = *g.Missed
	case g.Seq > g.After+1:
		n = g.Seq - g.After - 1
	default:
		c.cfg.Logger.Warn("canary resumed with a loss of unknown size", "partition", p)
		return
	}
	if n == 0 {
		return
	}
	c.mu.Lock()
	c.addLostLocked(p, n)
	c.credit[p] += n
	c.mu.Unlock()
	c.cfg.Logger.Warn("canary events lost: a hole in the sequence", "partition", p, "lost", n)
}

// event takes a canary event: its latency, and whether it is one this
// node awaits.
func (c *canary) event(e wsbus.Event) {
	now := time.Now()
	p, ok := c.part[e.Topic]
	id, err := streams.ParseID(e.ID)
	if !ok || err != nil {
		return
	}
	latency := max(now.Sub(time.UnixMilli(int64(id.Ms))), 0)
	c.latency.Observe(latency.Seconds())
	c.receivedBy[p].Inc()
	var from struct {
		Node string `json:"node"`
	}
	mine := json.Unmarshal(e.Data, &from) == nil && from.Node == c.cfg.Node
	c.mu.Lock()
	defer c.mu.Unlock()
	c.views[p].LatencyMS, c.views[p].Last = float64(latency)/float64(time.Millisecond), now
	// A topic's events arrive in ID order: those of this node's before
	// this one that have not come never will.
	rest, found, overtaken := settle(c.pending[p], id)
	if since := c.since[p]; found && !since.IsZero() && now.Sub(later(c.pending[p][overtaken].at, since)) > c.cfg.Timeout {
		// Past its timeout before expire looked: lost, and late.
		c.addLostLocked(p, 1)
		c.lateBy[p].Inc()
	}
	c.pending[p] = rest
	if overtaken > c.credit[p] {
		n := overtaken - c.credit[p]
		c.addLostLocked(p, n)
		c.cfg.Logger.Warn("canary events lost: overtaken by a later one", "partition", p, "lost", n)
	}
	c.credit[p] = 0
	var late bool
	c.overdue[p], late, _ = settle(c.overdue[p], id)
	switch {
	case late:
		c.lateBy[p].Inc()
	case !found && mine:
		c.early[sentKey{p, id}] = now
	}
}

// settle takes the events of sent (in ID order) up to id off it, and
// reports whether id was among them and how many came before it.
func settle(sent []sentEvent, id streams.ID) (rest []sentEvent, found bool, before uint64) {
	i := 0
	for ; i < len(sent) && sent[i].id.Less(id); i++ {
	}
	before = uint64(i)
	if found = i < len(sent) && sent[i].id == id; found {
		i++
	}
	return sent[i:], found, before
}

// run publishes a round of canary events each interval, and counts the
// events overdue before it, until ctx ends.
func (c *canary) run(ctx context.Context) {
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			c.expire(now)
			c.publish(ctx)
		}
	}
}

// publish appends one event to the canary topic of each partition this
// node owns whose subscription is in effect: an event published before
// would not be seen, and count as lost.
func (c *canary) publish(ctx context.Context) {
	for _, p := range c.cfg.Owned() {
		c.mu.Lock()
		subscribed := !c.since[p].IsZero()
		c.mu.Unlock()
		if !subscribed {
			continue
		}
		id, err := c.cfg.Publish(ctx, c.topics[p], c.data)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.cfg.Logger.Warn("publishing a canary event", "partition", p, "err", err)
			continue
		}
		sid, err := streams.ParseID(id)
		if err != nil {
			continue
		}
		now := time.Now()
		c.mu.Lock()
		if _, ok := c.early[sentKey{p, sid}]; ok {
			delete(c.early, sentKey{p, sid})
		} else {
			c.pending[p] = append(c.pending[p], sentEvent{sid, now})
		}
		c.mu.Unlock()
	}
}

// expire counts as lost this node's events that have waited longer than
// the timeout for a subscription in effect, and forgets what is too old
// to be of use.
func (c *canary) expire(now time.Time) {
	keep := max(10*c.cfg.Timeout, time.Minute) // how long overdue events may still count as late
	c.mu.Lock()
	defer c.mu.Unlock()
	var lost []int
	for p, sent := range c.pending {
		since := c.since[p]
		if since.IsZero() {
			continue // its clock is stopped: it may come with the resume
		}
		i := 0
		for ; i < len(sent) && now.Sub(later(sent[i].at, since)) > c.cfg.Timeout; i++ {
		}
		if i == 0 {
			continue
		}
		c.overdue[p] = append(c.overdue[p], sent[:i]...)
		c.pending[p] = sent[i:]
		c.addLostLocked(p, uint64(i))
		lost = append(lost, p)
	}
	for p, old := range c.overdue {
		i := 0
		for ; i < len(old) && now.Sub(old[i].at) > keep; i++ {
		}
		c.overdue[p] = old[i:]
	}
	for k, at := range c.early {
		if now.Sub(at) > c.cfg.Timeout {
			delete(c.early, k)
		}
	}
	if len(lost) > 0 {
		c.cfg.Logger.Warn("canary events lost: not arrived within --canary-timeout", "partitions", lost, "timeout", c.cfg.Timeout)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
