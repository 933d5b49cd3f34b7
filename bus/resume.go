package bus

import (
	"context"
	"fmt"
	"time"
	"unique"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// The resume argument: why a subscriber gets every event after its
// cursor, once and in order, across history, live pub/sub and lost
// connections. It is stated here once; the files it names point here.
//
// # What Redis gives
//
// The owner writes an event to its topic's history stream and publishes
// it on the topic's live channel in one script (lua/apply.lua): a history
// read after that script has the event, and every connection subscribed
// to the channel then is sent it. Redis confirms an SSUBSCRIBE on a
// connection before it sends that channel's messages there, and sends them
// in order; what was published to a connection that is lost and not yet
// read is gone. Each event has an ID, which orders a topic's events, and a
// seq, 1, 2, 3, … per topic: the next event has the next seq, which is how
// a gap on the live channel shows.
//
// # The state
//
// A topic (gateway_topic.go; under topic.mu) keeps:
//
//   - ready: its live channel was confirmed once; a subscribe waits for it.
//   - live: ... and on the current pub/sub connection.
//   - seen, seq: the newest event delivered to its subscribers (by ID),
//     and its seq (0 when not known). A catch-up reads history after seen.
//   - epoch: the partition epoch its subscribers were served under.
//   - catching, lost, backlog: while a catch-up from history is due, live
//     events wait in backlog; lost counts the connections lost, so that a
//     catch-up begun before the last loss does not end the hold. lost and
//     backlog live in the topic's topicSlow, made by the first hold and
//     dropped when the catch-up ends it.
//
// A subscription keeps last, the ID of the newest event sent to it;
// pending, the live events that came while its history was being sent;
// and live, set once pending is sent.
//
// # Subscribe: history, then live (gateway_subscribe.go)
//
// subscribe adds the subscription to its topic (not yet live), waits until
// the topic is ready, and only then reads history after the cursor; a
// coalesced read serves only requests made before it started
// (coalesce.go). Take any event E after the cursor. If E was written
// before the read, the read (or its next pages, read until one is short)
// has it. If after, E was published while the channel was confirmed: it
// comes live, and fan-out puts it in pending; or the connection was lost
// meanwhile, and the catch-up below reads it from history and does. goLive
// then sends pending and makes the subscription live, under topic.mu, so
// no live event gets past it. What fan-out handled before the
// subscription joined its topic was written before the read: history has
// it. A cursor that cannot be trusted (another epoch, recovered:false)
// starts last at zero: the subscriber is sent everything retained.
//
// # Fan-out: the seq check (gateway_topic.go)
//
// A live event is delivered when it follows what the topic delivered: it
// is not newer than seen, or it has the next seq, or the topic's seq is not
// known. Any other means live events went missing, the topic's sequence
// started again, or Redis lost data: fanOut holds the topic and queues a
// catch-up, which reads history and decides.
//
// # A lost pub/sub connection (gateway_pubsub.go)
//
// lose makes every topic on the lost connection hold its live events
// (startCatching): it is no longer live, and what comes live waits in its
// backlog. It runs once the lost connection's reader has ended and the
// fan-out shards have fanned out all it read (fanOuts.drain), so every
// event of the old connection was handled before the hold. The new
// connection subscribes every wanted channel, and a topic is caught up
// only once its own channel is confirmed there (markReady): a history
// read before that could miss an event published between the read and
// the subscription, which would then be in neither.
//
// Live events are fanned out by shards (gateway_shards.go), in the order
// Redis sent each topic's, but later than the connection's owner takes
// the confirmation that came before them: a topic may be ready, live, and
// even caught up before its shard fans out an event published after the
// confirmation. That event is then one a history read after the
// confirmation may have had too: pending, the backlog, or the ID filter
// take it as any other, and the seq check sees no gap, since the topic's
// events still come in order.
//
// # Catch-up (catchUpTopic, below)
//
// It reads history after seen, page by page, and delivers it; then the
// backlog. History read after the channel was confirmed, and what came
// live since, is everything; an event in both is delivered once (see the
// last section). A backlog event that does not follow by seq makes it
// read history once more. It ends the hold only while its topic is live
// and no connection was lost since it began; else the next confirmation
// queues another. A backlog past maxBacklog is dropped and read from
// history instead.
//
// # Epochs: 4001, then recovered:false
//
// An owner renews a partition's epoch when it finds Redis lost data
// (DESIGN.md), before it writes anything more, so a page of history read
// before a read that finds the epoch unchanged holds only events of that
// epoch: a catch-up reads the epoch after each page. When it is not the
// epoch the topic's subscribers were served under, what follows their
// cursors is not what history holds: each is closed with 4001 and its
// resume, under the new epoch, is answered recovered:false (resetLocked).
// A subscribe told a new epoch holds the topic for a catch-up too
// (noteEpoch), and so does the gateway's read of every partition's
// epoch once a second (watchEpochs), which tells quiet topics. A seq that skips ahead means history was trimmed past it:
// the subscribers not that far are closed with 4001, and their resume
// reports missed (skipLocked). A seq that goes back means Redis lost data
// no owner saw: the gateway renews the epoch itself (renewEpoch).
//
// # Never twice, never out of order: the ID filter
//
// Every path that sends an event to a subscription (a history page,
// goLive, fan-out, a catch-up) sends it only if its ID is above the
// subscription's last, and then moves last to it. A lagging client's
// catch-up (gateway_lag.go) sends again from the first event its
// connection dropped unsent, and fan-out passes the subscription by until
// that is done. So each subscriber's events are in ID order, each at most
// once; and by the above, no event after its cursor is left out without a
// 4001 that makes it resume and be told so.
//
// The tests of these steps, on a history in memory and without Redis, are
// in resume_test.go.

// historyReader is the topic history the gateway reads: a
// *streams.History on Redis; in the resume unit tests, a fake in memory.
type historyReader interface {
	Head(ctx context.Context, topic string, subjects ...string) (streams.Head, error)
	Resume(ctx context.Context, topic string, c streams.Cursor, page streams.Page, subjects ...string) (streams.Resume, error)
	ReadPage(ctx context.Context, topic string, after streams.ID, page streams.Page) ([]streams.Event, bool, error)
	Range(ctx context.Context, topic string, after streams.ID, count int) ([]streams.Event, error)
	Acked(ctx context.Context, topic, subject string) (streams.Acked, error)
	Epochs(ctx context.Context) ([]string, error)
}

var _ historyReader = (*streams.History)(nil)

// noteEpoch records the epoch a subscriber of t was told: the first is
// t's; one that differs means Redis lost data under t, which a catch-up
// from history sorts out (catchUpTopic closes the subscribers told the
// old one).
func (g *Gateway) noteEpoch(t *topic, epoch string) {
	t.mu.Lock()
	check := false
	switch {
	case t.epoch == noEpoch:
		t.epoch = internEpoch(epoch)
	case epoch != "" && epoch != t.epoch.Value():
		t.holdLocked() // a catch-up already running does not end the hold
		check = true
	}
	t.mu.Unlock()
	if check {
		g.queueCatchUp(t)
	}
}

// noEpoch is a topic's epoch until a subscriber is served.
var noEpoch unique.Handle[string]

// internEpoch returns the handle of epoch, noEpoch for "": every topic of
// a partition shares one copy of its epoch, not one per history reply.
func internEpoch(epoch string) unique.Handle[string] {
	if epoch == "" {
		return noEpoch
	}
	return unique.Make(epoch)
}

// epochText returns the epoch h holds; "" for noEpoch.
func epochText(h unique.Handle[string]) string {
	if h == noEpoch {
		return ""
	}
	return h.Value()
}

// markReady records that the live channel is subscribed and wakes the
// subscriptions waiting for it; it reports whether t is to be caught up
// from history, its channel having been lost. A topic keeps no channel
// once ready.
func (t *topic) markReady() (catching bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ready, t.live = true, true
	if t.slow != nil && t.slow.waiting != nil {
		close(t.slow.waiting)
		t.slow.waiting = nil
		t.unslowLocked()
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
	sl := t.slowLocked()
	if sl.waiting == nil {
		sl.waiting = make(chan struct{})
	}
	return false, sl.waiting
}

// holdEventLocked keeps a live event for the end of t's catch-up, or
// drops it when too many wait: the catch-up then reads history again.
func (t *topic) holdEventLocked(ev liveEvent) {
	sl := t.slowLocked()
	if len(sl.backlog) >= maxBacklog {
		sl.backlog, sl.dropped = nil, true
	}
	if !sl.dropped {
		sl.backlog = append(sl.backlog, ev)
	}
}

// holdLocked makes t hold its live events until a catch-up from history
// (also one already running) has checked it; reports whether it was not
// holding them already.
func (t *topic) holdLocked() bool {
	t.slowLocked().lost++ // a catch-up that began before does not end the hold
	was := t.catching
	t.catching = true
	return !was
}

// queueCatchUp queues t to be caught up from history by its connection's
// catch-up worker.
func (g *Gateway) queueCatchUp(t *topic) {
	g.mu.RLock()
	lc := g.parts[t.p]
	g.mu.RUnlock()
	if lc != nil {
		lc.queueCatchUp(t)
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
	from, lost := t.seen, t.slow.lost // catching: slow is kept until the hold ends
	t.mu.Unlock()
	g.stats.catchUps.Add(1)
	rechecked := false
	for {
		events, more, err := g.hist.ReadPage(g.ctx, t.name(), from, g.page())
		if err != nil {
			return err
		}
		head, err := g.hist.Head(g.ctx, t.name())
		if err != nil {
			return err
		}
		t.mu.Lock()
		sl := t.slow
		if t.epoch != noEpoch && head.Epoch != t.epoch.Value() {
			g.resetLocked(t, head)
			sl.backlog, sl.dropped = nil, false
			if sl.lost == lost && t.live {
				t.catching = false
				t.unslowLocked()
			}
			t.mu.Unlock()
			return nil
		}
		t.epoch = internEpoch(head.Epoch)
		back := false
		for _, e := range events {
			ev := liveEvent{id: streams.MustParseID(e.ID), seq: e.Seq, frame: eventFrame(t.name(), e)}
			if back = t.wentBackLocked(ev); back {
				break
			}
			g.skipLocked(t, ev)
			t.deliverLocked(g, ev)
			from = ev.id
		}
		if back {
			t.mu.Unlock()
			if err := g.renewEpoch(t.name(), int(t.p), head.Epoch); err != nil {
				return err
			}
			continue // the epoch read next resets t
		}
		if more || sl.dropped {
			sl.dropped = false
			t.mu.Unlock()
			continue
		}
		if sl.lost != lost || !t.live {
			t.mu.Unlock()
			return nil // lost again since: the catch-up after it ends the hold
		}
		delivered := 0
		for _, ev := range sl.backlog {
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
			sl.backlog = sl.backlog[delivered:]
			t.mu.Unlock()
			if err := g.renewEpoch(t.name(), int(t.p), head.Epoch); err != nil {
				return err
			}
			continue
		}
		if delivered < len(sl.backlog) {
			sl.backlog = sl.backlog[delivered:]
			from, rechecked = t.seen, true
			t.mu.Unlock()
			continue
		}
		sl.backlog, t.catching = nil, false
		t.unslowLocked()
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
	g.cfg.Logger.Warn("history trimmed past a topic's last live event: its subscribers resume", "topic", t.name(),
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
	g.cfg.Logger.Warn("partition epoch changed under a topic: its subscribers resume", "topic", t.name(),
		"subscribers", len(t.subs), "epoch", head.Epoch, "was", epochText(t.epoch))
	for _, s := range t.subs {
		s.conn.Close(ws.CloseSlowConsumer, "the bus lost data: reconnect and resume")
	}
	t.epoch, t.seen, t.seq = internEpoch(head.Epoch), head.ID, head.Seq
}

// queueCatchUp queues t to be caught up from history by catchUps.
func (lc *liveConn) queueCatchUp(t *topic) {
	lc.mu.Lock()
	if !lc.queued[t] {
		lc.queued[t] = true
		lc.catch = append(lc.catch, t)
	}
	lc.mu.Unlock()
	wake(lc.woken)
}

// catchUps catches topics up from history, one at a time, until the
// Gateway closes.
func (lc *liveConn) catchUps() {
	g := lc.g
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-lc.woken:
		}
		for {
			lc.mu.Lock()
			var t *topic
			if len(lc.catch) > 0 {
				t = lc.catch[0]
				lc.catch = lc.catch[1:]
				delete(lc.queued, t)
			}
			lc.mu.Unlock()
			if t == nil {
				break
			}
			for pause := 50 * time.Millisecond; ; pause = min(2*pause, 2*time.Second) {
				err := g.catchUpTopic(t)
				if err == nil {
					break
				}
				g.cfg.Logger.Warn("catching up topic from history", "topic", t.name(), "err", err)
				if !g.sleep(pause) {
					return
				}
			}
		}
	}
}
