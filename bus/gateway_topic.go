package bus

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// topicLinger keeps a topic's live channel subscribed this long after its
// last subscriber left, so churn does not cost a SUBSCRIBE each time.
const topicLinger = 30 * time.Second

// topic is one topic with local subscribers. What its resume state means
// and why it leaves no gap: resume.go.
//
// A gateway holds a topic per distinct topic its connections want, most
// with one subscriber, so a topic is kept small: one string for its live
// channel and its name, the state only a channel's first confirmation or
// a catch-up needs made when they do (topicSlow), and no goroutine,
// timer or metric label of its own. TestTopicMemory pins what it costs.
type topic struct {
	// channel is the topic's live channel, "<prefix>:{p}:live:<name>":
	// the string go-redis keeps while subscribed, and (its last nameLen
	// bytes) the name that Gateway.topics is keyed by.
	// Set by newTopic, as are p, nameLen and timed; read-only after.
	channel string

	mu    sync.Mutex
	subs  []*subscription       // each knows its index (subscription.idx)
	seen  streams.ID            // newest event delivered to this topic's subscribers
	seq   uint64                // seen's seq; 0 when not known
	epoch unique.Handle[string] // the partition's epoch its subscribers were served under; noEpoch until known
	slow  *topicSlow            // while a subscriber waits for ready or a catch-up is due; nil else

	// Guarded by Gateway.mu.
	idleSince int64 // unix nanoseconds when refs fell to 0
	refs      int32

	p       int32
	nameLen uint16
	asked   phase // guarded by Gateway.mu: what the current pub/sub connection was asked for channel (see liveConn)
	// timed: its deliveries count in GatewayConfig.DeliveryLatency (not
	// the canary's topics, which have their own latency).
	timed bool

	// Guarded by mu.
	ready    bool // Redis confirmed the live channel's subscription once
	live     bool // ... and on the current connection: a catch-up may end
	catching bool // pub/sub was lost: live events wait in slow.backlog
}

// topicSlow is a topic's state while subscribers wait for its channel's
// first confirmation, or while a catch-up from history is due: few topics
// at a time need it. Guarded by topic.mu.
type topicSlow struct {
	waiting chan struct{} // made by the first subscriber to wait for ready, closed then
	lost    int           // connections lost under this topic: a catch-up ends catching only if none since it began
	backlog []liveEvent   // live events received while catching up
	dropped bool          // backlog went past maxBacklog and was dropped: history has it
}

// newTopic returns topic name of partition p; its live channel is named
// by keys.
func newTopic(keys streams.Keys, p int, name string) *topic {
	return &topic{
		channel: keys.Live(p, name),
		nameLen: uint16(len(name)), // streams.ValidateTopic: at most 256 bytes
		p:       int32(p),
		timed:   !IsCanaryTopic(name),
	}
}

// name returns the topic's name, which shares the channel's string.
func (t *topic) name() string { return t.channel[len(t.channel)-int(t.nameLen):] }

// slowLocked returns t's topicSlow, made on first use.
func (t *topic) slowLocked() *topicSlow {
	if t.slow == nil {
		t.slow = &topicSlow{}
	}
	return t.slow
}

// unslowLocked drops t's topicSlow once nothing waits for ready and no
// catch-up is due. lost may start again from zero then: it is compared
// only within one catch-up, which ends the hold itself.
func (t *topic) unslowLocked() {
	if t.slow != nil && t.slow.waiting == nil && !t.catching {
		t.slow = nil
	}
}

// maxBacklog bounds the live events a catching topic holds; past it they
// are dropped and its catch-up reads them from history instead.
const maxBacklog = 10000

// liveEvent is one event with its frame, encoded once for every subscriber.
type liveEvent struct {
	id    streams.ID
	seq   uint64
	frame ws.Frame
}

// subscription is one connection's subscription to one topic.
type subscription struct {
	conn    clientConn // the client's connection (client.conn)
	topic   *topic
	last    streams.ID   // newest event sent; guarded by topic.mu once live
	pending *[]liveEvent // live events held until live, nil while none; guarded by topic.mu (a pointer: it keeps the subscription in the 64-byte size class)
	idx     atomic.Int32 // position in topic.subs, -1 when not in it; stored under topic.mu, loaded without it (see catchUpSub)
	live    bool         // history sent; guarded by topic.mu
	lagging bool         // live, but caught up from history: fan-out skips it; guarded by topic.mu
}

// deliverLocked sends ev to every subscriber that has not had it, in ID
// order; subscriptions still sending history hold it for later. A large
// topic is split over the cores: each subscriber is touched by one
// goroutine, and all are done before deliverLocked returns.
func (t *topic) deliverLocked(g *Gateway, ev liveEvent) {
	fresh := t.seen.Less(ev.id)
	if fresh {
		t.seen, t.seq = ev.id, ev.seq
	}
	if len(t.subs) == 0 {
		return
	}
	if fresh && t.timed && g.cfg.DeliveryLatency != nil {
		// Once per event: a catch-up hands on again the held events that
		// its history page had delivered already.
		defer observeLatency(g.cfg.DeliveryLatency, ev.id)
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

// observeLatency reports the time from id's XADD (the milliseconds in
// it, on Redis's clock) to now; a clock behind Redis's reports zero.
func observeLatency(observe func(time.Duration), id streams.ID) {
	observe(max(0, time.Since(time.UnixMilli(int64(id.Ms)))))
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
			if s.pending == nil {
				s.pending = new([]liveEvent)
			}
			if len(*s.pending) >= g.cfg.MaxPending {
				s.conn.Close(ws.CloseSlowConsumer, "slow consumer: reconnect and resume")
				continue
			}
			*s.pending = append(*s.pending, ev)
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

// refTopic returns the topic, counting a reference to it, and asks for
// its live channel when it is new. Nothing under g.mu waits on Redis: the
// channel's connection is asked after, by its own goroutine
// (gateway_pubsub.go).
func (g *Gateway) refTopic(name string) *topic {
	var lc *liveConn
	g.mu.Lock()
	t, ok := g.topics[name]
	if !ok {
		t = newTopic(g.cfg.Keys, streams.Partition(name, g.cfg.Partitions), name)
		g.topics[t.name()] = t // keyed by the channel's bytes: the caller's name is not kept
		lc = g.liveLocked(int(t.p))
		if lc != nil {
			// Swept while its channel was still asked for: the phase
			// comes back with the topic (see liveConn).
			t.asked = lc.gone[name]
			delete(lc.gone, name)
		}
	}
	t.refs++
	g.mu.Unlock()
	if lc != nil {
		lc.poke(t.name())
	}
	return t
}

// unrefTopic drops a reference to t; sweep drops t once it lingered.
func (g *Gateway) unrefTopic(t *topic) {
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
		g.unrefTopic(t)
	}
}

// sweep drops topics nobody has wanted for topicLinger.
func (g *Gateway) sweep() {
	tick := time.NewTicker(topicLinger / 3)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-tick.C:
			g.sweepIdle(now.UnixNano())
		}
	}
}

// sweepIdle drops the topics idle since before now - topicLinger; their
// connections' goroutines unsubscribe them.
func (g *Gateway) sweepIdle(now int64) {
	type gone struct {
		lc   *liveConn
		name string
	}
	var swept []gone
	g.mu.Lock()
	for name, t := range g.topics {
		if t.refs == 0 && now-t.idleSince > int64(topicLinger) {
			delete(g.topics, name)
			lc := g.parts[t.p]
			if lc != nil && t.asked != 0 {
				lc.gone[name] = t.asked // see liveConn
			}
			swept = append(swept, gone{lc, name})
		}
	}
	g.mu.Unlock()
	for _, s := range swept {
		if s.lc != nil {
			s.lc.poke(s.name)
		}
	}
}

func (g *Gateway) topicOf(channel string) *topic {
	_, name, ok := g.cfg.Keys.LiveTopic(channel)
	if !ok {
		return nil
	}
	return g.topicNamed(name)
}

// fanOut encodes a live event's frame once and queues it to every
// subscriber of its topic, or holds it for a catch-up when it does not
// follow what the topic delivered (resume.go).
func (g *Gateway) fanOut(channel, payload string) {
	g.stats.liveEvents.Add(1)
	t := g.topicOf(channel)
	if t == nil {
		return
	}
	idText, seq, ok := streams.EventSeq(payload)
	if !ok {
		g.cfg.Logger.Warn("ignoring a live message that is not a wsbus event", "channel", channel)
		return
	}
	id, err := streams.ParseID(idText)
	if err != nil {
		return
	}
	ev := liveEvent{id: id, seq: seq, frame: ws.TextFrameString(payload)}
	t.mu.Lock()
	check := !t.catching && !t.followsLocked(ev)
	if check {
		// Not the next event: live events were lost, the topic's sequence
		// restarted, or Redis lost data (a new epoch). History decides.
		t.holdLocked()
	}
	if t.catching {
		t.holdEventLocked(ev)
	} else {
		t.deliverLocked(g, ev)
	}
	t.mu.Unlock()
	if check {
		g.queueCatchUp(t)
	}
}
