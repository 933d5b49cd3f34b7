package bus

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// topicLinger keeps a topic's live channel subscribed this long after its
// last subscriber left, so churn does not cost a SUBSCRIBE each time.
const topicLinger = 30 * time.Second

// topic is one topic with local subscribers.
type topic struct {
	name string
	p    int

	// Guarded by Gateway.mu.
	refs      int
	idleSince int64 // unix nanoseconds when refs fell to 0

	mu       sync.Mutex
	ready    bool            // Redis confirmed the live channel's subscription
	waiting  chan struct{}   // made by the first subscriber to wait for ready, closed then
	subs     []*subscription // each knows its index (subscription.idx)
	seen     streams.ID      // newest event delivered to this topic's subscribers
	catching bool            // pub/sub was lost: live events wait in backlog
	backlog  []liveEvent     // live events received while catching up
}

// liveEvent is one event with its frame, encoded once for every subscriber.
type liveEvent struct {
	id    streams.ID
	frame []byte
}

// subscription is one connection's subscription to one topic.
type subscription struct {
	conn    *ws.Conn
	topic   *topic
	last    streams.ID   // newest event sent; guarded by topic.mu once live
	pending []liveEvent  // live events held until live; guarded by topic.mu
	idx     atomic.Int32 // position in topic.subs, -1 when not in it; stored under topic.mu, loaded without it (see catchUpSub)
	live    bool         // history sent; guarded by topic.mu
	lagging bool         // live, but caught up from history: fan-out skips it; guarded by topic.mu
}

// markReady records that the live channel is subscribed and wakes the
// subscriptions waiting for it. A topic keeps no channel once ready.
func (t *topic) markReady() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ready = true
	if t.waiting != nil {
		close(t.waiting)
		t.waiting = nil
	}
}

// readyOrWait reports whether the live channel is subscribed; if not, it
// returns a channel closed once it is.
func (t *topic) readyOrWait() (bool, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ready {
		return true, nil
	}
	if t.waiting == nil {
		t.waiting = make(chan struct{})
	}
	return false, t.waiting
}

// deliverLocked sends ev to every subscriber that has not had it, in ID
// order; subscriptions still sending history hold it for later. A large
// topic is split over the cores: each subscriber is touched by one
// goroutine, and all are done before deliverLocked returns.
func (t *topic) deliverLocked(g *Gateway, ev liveEvent) {
	if t.seen.Less(ev.id) {
		t.seen = ev.id
	}
	parts := runtime.GOMAXPROCS(0)
	if len(t.subs) < parallelFanOut || parts < 2 {
		deliverTo(g, t.subs, ev)
		return
	}
	var wg sync.WaitGroup
	chunk := (len(t.subs) + parts - 1) / parts
	for i := chunk; i < len(t.subs); i += chunk {
		wg.Add(1)
		go func(subs []*subscription) {
			defer wg.Done()
			deliverTo(g, subs, ev)
		}(t.subs[i:min(i+chunk, len(t.subs))])
	}
	deliverTo(g, t.subs[:chunk], ev)
	wg.Wait()
}

// parallelFanOut is the subscriber count from which a live event is
// written from several goroutines at once: below it the goroutines cost
// more than the writes.
const parallelFanOut = 1024

func deliverTo(g *Gateway, subs []*subscription, ev liveEvent) {
	for _, s := range subs {
		switch {
		case s.lagging:
			// Caught up from history (gateway_lag.go).
		case !s.live:
			if len(s.pending) >= g.cfg.MaxPending {
				s.conn.Close(ws.CloseSlowConsumer, "slow consumer: reconnect and resume")
				continue
			}
			s.pending = append(s.pending, ev)
		case s.last.Less(ev.id):
			s.offer(ev)
		}
	}
}

// offer queues ev to s, which is live and has not had it. An overflow
// leaves s.last at the last event queued and makes s lag.
func (s *subscription) offer(ev liveEvent) bool {
	err := s.conn.Offer(ev.frame)
	switch {
	case err == nil:
		s.last = ev.id
	case errors.Is(err, ws.ErrOverflow):
		s.lagging = true
	default:
		s.last = ev.id // closed: nothing more matters
	}
	return err == nil
}

// addLocked and removeLocked keep t.subs a dense slice.
func (t *topic) addLocked(s *subscription) {
	s.idx.Store(int32(len(t.subs)))
	t.subs = append(t.subs, s)
}

func (t *topic) removeLocked(s *subscription) bool {
	i := int(s.idx.Load())
	if i < 0 || i >= len(t.subs) || t.subs[i] != s {
		return false
	}
	last := t.subs[len(t.subs)-1]
	t.subs[i] = last
	last.idx.Store(int32(i))
	t.subs[len(t.subs)-1] = nil
	t.subs = t.subs[:len(t.subs)-1]
	s.idx.Store(-1)
	if len(t.subs) == 0 {
		t.subs = nil // a topic left idle keeps no array
	}
	return true
}

// acquire returns the topic, subscribing its live channel when it is new.
func (g *Gateway) acquire(name string) *topic {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.topics[name]
	if !ok {
		t = &topic{name: name, p: streams.Partition(name, g.cfg.Partitions)}
		g.topics[name] = t
		if err := g.liveLocked(t.p).ps.SSubscribe(g.ctx, g.cfg.Keys.Live(t.p, name)); err != nil {
			// go-redis resubscribes on its next connection; the catch-up
			// that follows covers what was missed.
			g.cfg.Logger.Warn("subscribing live channel", "topic", name, "err", err)
		}
	}
	t.refs++
	return t
}

// release drops a reference to t; sweep unsubscribes it once it lingered.
func (g *Gateway) release(t *topic) {
	g.mu.Lock()
	t.refs--
	if t.refs == 0 {
		t.idleSince = time.Now().UnixNano()
	}
	g.mu.Unlock()
}

// removeSub detaches s from its topic, once.
func (g *Gateway) removeSub(s *subscription) {
	t := s.topic
	t.mu.Lock()
	ok := t.removeLocked(s)
	s.pending = nil
	t.mu.Unlock()
	if ok {
		g.stats.subscriptions.Add(-1)
		g.release(t)
	}
}

// sweep unsubscribes topics nobody has wanted for topicLinger.
func (g *Gateway) sweep() {
	tick := time.NewTicker(topicLinger / 3)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-tick.C:
			g.mu.Lock()
			for name, t := range g.topics {
				if t.refs == 0 && now.UnixNano()-t.idleSince > int64(topicLinger) {
					delete(g.topics, name)
					_ = g.parts[t.p].ps.SUnsubscribe(g.ctx, g.cfg.Keys.Live(t.p, name))
				}
			}
			g.mu.Unlock()
		}
	}
}

// liveConn is a pub/sub connection for live channels. On Redis Cluster a
// PubSub is bound to the node of its first channel's slot, so each
// partition gets its own; on a single Redis one connection carries every
// partition's channels: go-redis gives each PubSub connection 64 KiB of
// buffers whatever the options say, 4 MiB for 64 partitions, and each is a
// connection Redis holds.
type liveConn struct {
	g  *Gateway
	ps *redis.PubSub // guarded by Gateway.mu: renew replaces it
}

func (lc *liveConn) pubsub() *redis.PubSub {
	lc.g.mu.RLock()
	defer lc.g.mu.RUnlock()
	return lc.ps
}

// renew replaces old, a connection whose channels Redis no longer serves
// there (a MOVED reply, or a slot that moved away), with a new one
// subscribed to every channel of lc's partitions, found by a fresh slot
// map. The caller has started the catch-up that the first confirmation
// completes.
func (lc *liveConn) renew(old *redis.PubSub) {
	g := lc.g
	if cc, ok := g.cfg.Redis.(*redis.ClusterClient); ok {
		cc.ReloadState(g.ctx)
	}
	g.mu.Lock()
	if lc.ps != old {
		g.mu.Unlock()
		return
	}
	var channels []string
	for _, t := range lc.topicsLocked() {
		channels = append(channels, g.cfg.Keys.Live(t.p, t.name))
	}
	ps := g.cfg.Redis.SSubscribe(g.ctx)
	lc.ps = ps
	g.mu.Unlock()
	_ = old.Close()
	if len(channels) > 0 {
		// One slot per connection on Redis Cluster; no slots on one Redis.
		if err := ps.SSubscribe(g.ctx, channels...); err != nil {
			g.cfg.Logger.Warn("resubscribing live channels", "channels", len(channels), "err", err)
		}
	}
}

// liveLocked returns the pub/sub connection for partition p's channels.
func (g *Gateway) liveLocked(p int) *liveConn {
	if lc := g.parts[p]; lc != nil {
		return lc
	}
	lc := g.shared
	if lc == nil {
		lc = &liveConn{g: g, ps: g.cfg.Redis.SSubscribe(g.ctx)}
		go lc.receive()
		if _, cluster := g.cfg.Redis.(*redis.ClusterClient); !cluster {
			g.shared = lc
		}
	}
	g.parts[p] = lc
	return lc
}

// topics returns the topics whose live channels lc carries.
func (lc *liveConn) topics() []*topic {
	lc.g.mu.RLock()
	defer lc.g.mu.RUnlock()
	return lc.topicsLocked()
}

func (lc *liveConn) topicsLocked() []*topic {
	var ts []*topic
	for _, t := range lc.g.topics {
		if lc.g.parts[t.p] == lc {
			ts = append(ts, t)
		}
	}
	return ts
}

// receive reads one pub/sub connection until the Gateway closes. After the
// connection is lost, go-redis reconnects and resubscribes every channel
// with one command; the first confirmation after that starts a catch-up of
// every topic of its partitions from history.
func (lc *liveConn) receive() {
	g := lc.g
	lost := false
	loseOnce := func(err error) {
		if lost {
			return
		}
		lost = true
		ts := lc.topics()
		g.cfg.Logger.Warn("live pub/sub connection lost; will catch up from history", "topics", len(ts), "err", err)
		startCatching(ts)
	}
	for g.ctx.Err() == nil {
		ps := lc.pubsub()
		msg, err := ps.ReceiveTimeout(g.ctx, 15*time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				_ = ps.Ping(g.ctx) // a dead connection fails here and reconnects
				continue
			}
			if g.ctx.Err() != nil {
				return
			}
			loseOnce(err)
			var reply redis.Error
			if errors.As(err, &reply) {
				// A reply on a sound connection (MOVED: the slot is served
				// elsewhere now): go-redis would not reconnect by itself.
				lc.renew(ps)
				time.Sleep(200 * time.Millisecond)
				continue
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && g.topicOf(m.Channel) != nil {
				// Redis dropped a channel still wanted: its slot moved.
				loseOnce(errors.New("redis unsubscribed " + m.Channel))
				lc.renew(ps)
				continue
			}
			if m.Kind != "ssubscribe" {
				continue
			}
			if t := g.topicOf(m.Channel); t != nil {
				t.markReady()
			}
			if lost {
				lost = false
				go g.catchUp(lc.topics())
			}
		case *redis.Message:
			g.fanOut(m.Channel, m.Payload)
		}
	}
}

func (g *Gateway) topicOf(channel string) *topic {
	_, name, ok := g.cfg.Keys.LiveTopic(channel)
	if !ok {
		return nil
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.topics[name]
}

// fanOut encodes a live event's frame once and queues it to every
// subscriber of its topic.
func (g *Gateway) fanOut(channel, payload string) {
	g.stats.liveEvents.Add(1)
	t := g.topicOf(channel)
	if t == nil {
		return
	}
	idText, ok := streams.EventID(payload)
	if !ok {
		g.cfg.Logger.Warn("ignoring a live message that is not a wsbus event", "channel", channel)
		return
	}
	id, err := streams.ParseID(idText)
	if err != nil {
		return
	}
	ev := liveEvent{id: id, frame: ws.TextFrameString(payload)}
	t.mu.Lock()
	if t.catching {
		t.backlog = append(t.backlog, ev)
	} else {
		t.deliverLocked(g, ev)
	}
	t.mu.Unlock()
}

// startCatching makes topics hold live events until they are caught up
// from history.
func startCatching(ts []*topic) {
	for _, t := range ts {
		t.mu.Lock()
		t.catching = true
		t.mu.Unlock()
	}
}

// catchUp delivers, for every topic of ts, the history written after the
// newest event its subscribers had, then the live events held meanwhile;
// IDs already delivered are dropped per subscriber.
func (g *Gateway) catchUp(ts []*topic) {
	for _, t := range ts {
		g.stats.catchUps.Add(1)
		for g.ctx.Err() == nil {
			if err := g.catchUpTopic(t); err == nil {
				break
			} else {
				g.cfg.Logger.Warn("catching up topic from history", "topic", t.name, "err", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

func (g *Gateway) catchUpTopic(t *topic) error {
	t.mu.Lock()
	from := t.seen
	t.mu.Unlock()
	for {
		events, err := g.hist.Range(g.ctx, t.name, from, g.cfg.HistoryPage)
		if err != nil {
			return err
		}
		t.mu.Lock()
		for _, e := range events {
			from = streams.MustParseID(e.ID)
			t.deliverLocked(g, liveEvent{id: from, frame: eventFrame(t.name, e)})
		}
		if len(events) < g.cfg.HistoryPage {
			for _, ev := range t.backlog {
				t.deliverLocked(g, ev)
			}
			t.backlog, t.catching = nil, false
			t.mu.Unlock()
			return nil
		}
		t.mu.Unlock()
	}
}

// eventFrame encodes a history event as a frame with one allocation, the
// frame's own: the data and the event JSON are built in a pooled scratch
// buffer (data first, the event after it).
func eventFrame(topic string, e streams.Event) []byte {
	bp := scratch.Get().(*[]byte)
	buf := append((*bp)[:0], e.Data...)
	n := len(buf)
	buf = streams.AppendEvent(buf, topic, e.ID, e.Seq, buf[:n])
	frame := ws.TextFrame(buf[n:])
	*bp = buf
	scratch.Put(bp)
	return frame
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
