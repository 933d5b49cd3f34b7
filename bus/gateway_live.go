package bus

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

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
	ready    bool            // Redis confirmed the live channel's subscription once
	live     bool            // ... and on the current connection: a catch-up may end
	waiting  chan struct{}   // made by the first subscriber to wait for ready, closed then
	subs     []*subscription // each knows its index (subscription.idx)
	seen     streams.ID      // newest event delivered to this topic's subscribers
	seq      uint64          // seen's seq; 0 when not known
	epoch    string          // the partition's epoch its subscribers were served under; "" until known
	catching bool            // pub/sub was lost: live events wait in backlog
	lost     int             // connections lost under this topic: a catch-up ends catching only if none since it began
	backlog  []liveEvent     // live events received while catching up
	dropped  bool            // backlog went past maxBacklog and was dropped: history has it
}

// maxBacklog bounds the live events a catching topic holds; past it they
// are dropped and its catch-up reads them from history instead.
const maxBacklog = 10000

// liveEvent is one event with its frame, encoded once for every subscriber.
type liveEvent struct {
	id    streams.ID
	seq   uint64
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
// subscriptions waiting for it; it reports whether t is to be caught up
// from history, its channel having been lost. A topic keeps no channel
// once ready.
func (t *topic) markReady() (catching bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ready, t.live = true, true
	if t.waiting != nil {
		close(t.waiting)
		t.waiting = nil
	}
	return t.catching
}

// startCatching makes t hold its live events until it is caught up from
// history, if it had a live channel; it reports whether t was not
// catching already.
func (t *topic) startCatching() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live = false
	if !t.ready {
		return false // no subscriber has gone live: nothing to catch up
	}
	return t.holdLocked()
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
		t.seen, t.seq = ev.id, ev.seq
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

// refTopic returns the topic, counting a reference to it, and asks for
// its live channel when it is new. Nothing under g.mu waits on Redis: the
// channel's connection is asked after, by its own goroutine
// (gateway_pubsub.go).
func (g *Gateway) refTopic(name string) *topic {
	var lc *liveConn
	g.mu.Lock()
	t, ok := g.topics[name]
	if !ok {
		t = &topic{name: name, p: streams.Partition(name, g.cfg.Partitions)}
		g.topics[name] = t
		lc = g.liveLocked(t.p)
	}
	t.refs++
	g.mu.Unlock()
	if lc != nil {
		lc.poke(name)
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
			swept = append(swept, gone{g.parts[t.p], name})
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
// subscriber of its topic.
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
		g.checkTopic(t)
	}
}

// holdEventLocked keeps a live event for the end of t's catch-up, or
// drops it when too many wait: the catch-up then reads history again.
func (t *topic) holdEventLocked(ev liveEvent) {
	if len(t.backlog) >= maxBacklog {
		t.backlog, t.dropped = nil, true
	}
	if !t.dropped {
		t.backlog = append(t.backlog, ev)
	}
}

// holdLocked makes t hold its live events until a catch-up from history
// (also one already running) has checked it; reports whether it was not
// holding them already.
func (t *topic) holdLocked() bool {
	t.lost++ // a catch-up that began before does not end the hold
	was := t.catching
	t.catching = true
	return !was
}

// checkTopic queues t to be caught up from history by its connection's
// catch-up worker.
func (g *Gateway) checkTopic(t *topic) {
	g.mu.RLock()
	lc := g.parts[t.p]
	g.mu.RUnlock()
	if lc != nil {
		lc.catchUp(t)
	}
}

// catchUpTopic delivers the history written after the newest event t's
// subscribers had, then the live events held meanwhile; IDs already
// delivered are dropped per subscriber. It ends t's hold only while t's
// channel is confirmed on the current connection (else the confirmation
// queues another catch-up) and no connection was lost since it began.
//
// Each page of history is checked against the partition's epoch, read
// after it: an owner renews the epoch before it writes anything after a
// loss, so a page read before a read that finds the epoch unchanged holds
// only events of that epoch. When the epoch is no longer the one t's
// subscribers were served under, Redis lost data they may have had (a
// restart without persistence, a failover before replication): what
// follows their cursors is not what history now holds, so each is closed
// with 4001 to resume, which the new epoch answers with recovered:false.
// An event whose seq skips ahead of the last one delivered means history
// was trimmed past it: the subscribers that had not got that far are
// closed with 4001 too (their resume gets missed).
//
// An event whose seq goes back (to other than 1: that is a sequence
// started again) means Redis lost the newest events without the epoch
// showing it: the gateway renews the partition's epoch itself, and the
// subscribers are closed as for any changed epoch.
//
// A held live event that does not follow the last one delivered (by seq)
// makes it read history and the epoch once more; what still does not
// follow then is judged as above.
func (g *Gateway) catchUpTopic(t *topic) error {
	t.mu.Lock()
	if !t.catching || !t.live {
		t.mu.Unlock()
		return nil // done, or the confirmation queues it again
	}
	from, lost := t.seen, t.lost
	t.mu.Unlock()
	g.stats.catchUps.Add(1)
	rechecked := false
	for {
		events, err := g.hist.Range(g.ctx, t.name, from, g.cfg.HistoryPage)
		if err != nil {
			return err
		}
		head, err := g.hist.Head(g.ctx, t.name)
		if err != nil {
			return err
		}
		t.mu.Lock()
		if t.epoch != "" && head.Epoch != t.epoch {
			g.resetLocked(t, head)
			t.backlog, t.dropped = nil, false
			if t.lost == lost && t.live {
				t.catching = false
			}
			t.mu.Unlock()
			return nil
		}
		t.epoch = head.Epoch
		back := false
		for _, e := range events {
			ev := liveEvent{id: streams.MustParseID(e.ID), seq: e.Seq, frame: eventFrame(t.name, e)}
			if back = t.wentBackLocked(ev); back {
				break
			}
			g.skipLocked(t, ev)
			t.deliverLocked(g, ev)
			from = ev.id
		}
		if back {
			epoch := t.epoch
			t.mu.Unlock()
			if err := g.renewEpoch(t.name, t.p, epoch); err != nil {
				return err
			}
			continue // the epoch read next resets t
		}
		if len(events) == g.cfg.HistoryPage || t.dropped {
			t.dropped = false
			t.mu.Unlock()
			continue
		}
		if t.lost != lost || !t.live {
			t.mu.Unlock()
			return nil // lost again since: the catch-up after it ends the hold
		}
		delivered := 0
		for _, ev := range t.backlog {
			if !rechecked && !t.followsLocked(ev) {
				break
			}
			if back = t.wentBackLocked(ev); back {
				break
			}
			g.skipLocked(t, ev)
			t.deliverLocked(g, ev)
			delivered++
		}
		if back {
			t.backlog = t.backlog[delivered:]
			epoch := t.epoch
			t.mu.Unlock()
			if err := g.renewEpoch(t.name, t.p, epoch); err != nil {
				return err
			}
			continue
		}
		if delivered < len(t.backlog) {
			t.backlog = t.backlog[delivered:]
			from, rechecked = t.seen, true
			t.mu.Unlock()
			continue
		}
		t.backlog, t.catching = nil, false
		t.mu.Unlock()
		return nil
	}
}

// skipLocked closes with 4001 the subscribers of t that have not had the
// event before ev, when ev's seq skips ahead of the last one t delivered:
// what lies between was trimmed from history before they could have it.
// Their resumes are told recovered:false with missed.
func (g *Gateway) skipLocked(t *topic, ev liveEvent) {
	if t.seq == 0 || ev.seq == 0 || !t.seen.Less(ev.id) || ev.seq <= t.seq+1 {
		return
	}
	g.stats.resets.Add(1)
	n := 0
	for _, s := range t.subs {
		if s.last.Less(ev.id) {
			s.conn.Close(ws.CloseSlowConsumer, "events were trimmed from history before they could be sent: reconnect and resume")
			n++
		}
	}
	g.cfg.Logger.Warn("history trimmed past a topic's last live event: its subscribers resume", "topic", t.name,
		"subscribers", n, "seq", ev.seq, "after", t.seq)
}

// wentBackLocked reports whether ev, newer than what t delivered, has a
// seq that goes back to other than 1 (1 is a sequence that started again,
// an idle topic's history having expired): Redis lost t's newest events
// and new ones took their seqs.
func (t *topic) wentBackLocked(ev liveEvent) bool {
	return t.seq != 0 && ev.seq > 1 && t.seen.Less(ev.id) && ev.seq <= t.seq
}

// renewEpoch renews the epoch of partition p if it is still epoch, the
// one the topic's subscribers (or a resuming client) were served under:
// the topic's history went back, so Redis lost data no owner's check saw.
// A catch-up's next read of the epoch then closes the topic's
// subscribers, whose resumes get recovered:false with the new epoch.
func (g *Gateway) renewEpoch(topic string, p int, epoch string) error {
	keys := []string{g.cfg.Keys.PartitionMeta(p)}
	renewed, err := renewEpochScript.Run(g.ctx, g.cfg.Redis, keys, epoch, streams.NewEpoch()).Int()
	if err != nil {
		return fmt.Errorf("renewing the epoch of partition %d: %w", p, err)
	}
	if renewed == 1 {
		g.stats.epochs.Add(1)
		g.cfg.Logger.Warn("a topic's history went back under its epoch: partition epoch renewed", "topic", topic, "partition", p)
	}
	return nil
}

// followsLocked reports whether ev may be delivered after what t has
// delivered: it is older (each subscriber drops it), or it is the next by
// seq, or t knows no seq yet.
func (t *topic) followsLocked(ev liveEvent) bool {
	return t.seq == 0 || !t.seen.Less(ev.id) || ev.seq == t.seq+1
}

// resetLocked closes every subscriber of t, whose partition's data was
// lost, with 4001 (they resume and learn it from the new epoch), and
// starts t again from the partition's head.
func (g *Gateway) resetLocked(t *topic, head streams.Head) {
	g.stats.resets.Add(1)
	g.cfg.Logger.Warn("partition epoch changed under a topic: its subscribers resume", "topic", t.name,
		"subscribers", len(t.subs), "epoch", head.Epoch, "was", t.epoch)
	for _, s := range t.subs {
		s.conn.Close(ws.CloseSlowConsumer, "the bus lost data: reconnect and resume")
	}
	t.epoch, t.seen, t.seq = head.Epoch, head.ID, head.Seq
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
