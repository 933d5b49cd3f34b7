package bus

import (
	"bytes"
	"errors"
	"math"
	"time"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// Lagging clients (--slow-consumer lag, ws.OverflowDrop).
//
// Live events are queued with ws.Conn.Offer. When a client's queue
// overflows, ws drops the live frames not yet begun on the wire, refuses
// further offers and calls Overflow; replies and history, queued with Send
// and SendWait, are never dropped. One goroutine per lagging client
// (catchUpClient) then works until nothing lags:
//
//  1. Conn.Recover hands the dropped frames back while offers are still
//     refused, so no live frame of any topic has got past them. Every
//     live subscription of the client (all that could have had a frame
//     dropped have joined it by then) is marked lagging, under its
//     topic's lock: fan-out skips it from then on, holding nothing for it,
//     so the gateway's memory for the client stays within the queue bound.
//     Then Offer may queue again.
//  2. A subscription's cursor (subscription.last) is the last event it
//     queued; the first dropped event of its topic, when there is one, is
//     the first not written, so the catch-up starts there.
//  3. Each lagging subscription reads its topic's history from its cursor
//     in pages bounded by bytes and sends it with SendWait, at the pace
//     the socket drains. A page that does not begin right after the
//     cursor means history was trimmed past it: the client is closed with
//     4001 and its resume is answered recovered:false.
//  4. At the end of history, under the topic's lock, the subscription
//     goes live again once its cursor has reached the newest event
//     delivered to the topic (topic.seen): every later live event has a
//     greater ID, and the cursor drops those history already sent, as
//     goLive does after a resume.
//
// An offer refused by an overflow marks its subscription lagging too. Its
// frames dropped by that overflow are only known once the overflow is
// recovered, so no catch-up starts while an overflow is pending (see
// recoverDropped).

// errTrimmed ends the catch-up of a client that history cannot serve.
var errTrimmed = errors.New("bus: history trimmed past a lagging client's cursor")

// Overflow starts, or asks for another round of, the catch-up of a
// client whose queue overflowed (ws.OverflowHandler).
func (g *Gateway) Overflow(c *ws.Conn) {
	cl, ok := c.Value().(*client)
	if !ok {
		return
	}
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return
	}
	g.stats.lagCatchUps.Add(1)
	if cl.lagRun {
		cl.lagAgain = true
		cl.mu.Unlock()
		return
	}
	cl.lagRun = true
	cl.mu.Unlock()
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ctx.Err() != nil {
		return // closing: no new goroutine for Close to wait for
	}
	g.lagging.Add(1)
	go g.catchUpClient(cl)
}

// catchUpClient catches the client's lagging subscriptions up, one at a
// time, until none lags, the client is gone, or the Gateway closes. It is
// the only caller of the client's Conn.Recover.
func (g *Gateway) catchUpClient(cl *client) {
	defer g.lagging.Done()
	next := make(map[*subscription]streams.ID) // first dropped event, until caught up
	for {
		s := cl.firstLagging()
		if g.recoverDropped(cl, next) {
			continue // an overflow was pending: look again
		}
		if s == nil {
			if cl.lagDone() {
				return
			}
			continue
		}
		err := g.catchUpSub(cl.conn(), s, next[s])
		delete(next, s)
		if err != nil {
			return
		}
	}
}

// recoverDropped takes the pending overflow of the client's connection,
// if there is one, while offers are refused: it marks every live
// subscription lagging (all that could have had a frame dropped have
// joined the client by then) and records the first dropped event of each
// topic in next. It reports whether there was an overflow.
//
// A subscription found lagging before a recoverDropped that finds none
// is safe to catch up: the overflow that refused it, or the one it was
// marked for, has been taken and its drops recorded, and it has offered
// nothing since, so no later overflow holds frames of it.
func (g *Gateway) recoverDropped(cl *client, next map[*subscription]streams.ID) bool {
	return cl.conn().Recover(func(dropped []ws.Frame) {
		subs := cl.snapshot()
		for _, s := range subs {
			s.topic.mu.Lock()
			if s.live && s.idx.Load() >= 0 {
				s.lagging = true
			}
			s.topic.mu.Unlock()
		}
		for i, id := range firstDropped(dropped, subs) {
			if _, ok := next[subs[i]]; !ok && !id.IsZero() {
				next[subs[i]] = id
			}
		}
	})
}

// firstLagging returns a lagging subscription of the client, or nil.
func (cl *client) firstLagging() *subscription {
	for _, s := range cl.snapshot() {
		s.topic.mu.Lock()
		lagging := s.lagging && s.idx.Load() >= 0
		s.topic.mu.Unlock()
		if lagging {
			return s
		}
	}
	return nil
}

// lagDone reports whether the client's catch-up may end, when nothing
// lags: no overflow came meanwhile (Overflow sets lagAgain while it runs).
func (cl *client) lagDone() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.closed {
		return true
	}
	if cl.lagAgain {
		cl.lagAgain = false
		return false
	}
	cl.lagRun = false
	return true
}

func (cl *client) snapshot() []*subscription {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]*subscription(nil), cl.subs...)
}

// firstDropped returns, for each subscription, the ID of the first
// dropped event of its topic (zero when none was dropped).
func firstDropped(dropped []ws.Frame, subs []*subscription) []streams.ID {
	next := make([]streams.ID, len(subs))
	if len(dropped) == 0 {
		return next
	}
	quoted := make([][]byte, len(subs))
	for i, s := range subs {
		quoted[i] = streams.AppendJSONString(nil, s.topic.name())
	}
	for _, f := range dropped {
		payload := f.Payload()
		idText, ok := streams.EventID(string(payload[:min(len(payload), eventIDPrefix)]))
		if !ok {
			continue
		}
		id, err := streams.ParseID(idText)
		if err != nil {
			continue
		}
		for i := range subs {
			if next[i].IsZero() && eventOfTopic(payload, quoted[i]) {
				next[i] = id
				break
			}
		}
	}
	return next
}

// eventIDPrefix is enough of an event's JSON to hold its ID.
const eventIDPrefix = 96

// eventOfTopic reports whether an event encoded by streams.AppendEvent is
// of the topic whose JSON string is quoted. The "topic" member comes
// before "data", after the ID and any other header member (numbers), so
// its first occurrence is the member itself.
func eventOfTopic(payload, quoted []byte) bool {
	_, rest, ok := bytes.Cut(payload, []byte(`,"topic":`))
	return ok && bytes.HasPrefix(rest, quoted) && len(rest) > len(quoted) && rest[len(quoted)] == ','
}

// catchUpSub sends a lagging subscription its topic's history from its
// cursor (or from next, its first dropped event) and makes it live again.
func (g *Gateway) catchUpSub(c clientConn, s *subscription, next streams.ID) error {
	t := s.topic
	t.mu.Lock()
	from, lagging := s.last, s.lagging && s.idx.Load() >= 0
	t.mu.Unlock()
	if !lagging || next.IsZero() && g.goLiveAgain(s, from, true) {
		// Nothing of its topic was dropped or refused since its last
		// event: it reads no history (most topics of a lagging client).
		return nil
	}
	p := pager{g: g, topic: t.name(), from: from, next: next, size: g.cfg.MaxData}
	// Checked again under the connection's lock as each frame is queued:
	// an unsubscribe while SendWait waits for room has its reply queued
	// after the frame or instead of it, never before it.
	subscribed := func() bool { return s.idx.Load() >= 0 }
	behind := 0 // pages in a row that ended before the topic's newest event
	for {
		events, err := p.read()
		if errors.Is(err, errTrimmed) || behind > maxBehind {
			c.Close(ws.CloseSlowConsumer, "slow consumer: history no longer holds what it missed; reconnect and resume")
			return errTrimmed
		}
		if err != nil {
			if g.ctx.Err() == nil {
				g.cfg.Logger.Warn("catching up a lagging client from history", "topic", t.name(), "err", err)
			}
			if !g.sleep(100 * time.Millisecond) {
				return err
			}
			continue
		}
		for _, e := range events {
			if !s.subscribed() {
				return nil // unsubscribed: send it nothing more
			}
			if err := c.SendWaitIf(eventFrame(t.name(), e), subscribed); err != nil {
				return err // closed: Closed cleans up
			}
			p.from, p.sent = streams.MustParseID(e.ID), true
		}
		if g.goLiveAgain(s, p.from, p.end) {
			return nil
		}
		if !p.end || len(events) > 0 {
			behind = 0
			continue
		}
		// The newest event was delivered live but history ended before
		// it: a read that raced its write, or Redis lost it.
		behind++
		if !g.sleep(behindWait) {
			return g.ctx.Err()
		}
	}
}

// A catch-up whose history ends before the newest event delivered to its
// topic reads again after behindWait, up to maxBehind times in a row: a
// live event is written to history before it is published, so past that
// Redis lost it (a failover, a restart from an old snapshot) and the
// client is closed with 4001 to resume against the new epoch.
const (
	behindWait = 20 * time.Millisecond
	maxBehind  = 50
)

// subscribed reports whether s is still in its topic.
func (s *subscription) subscribed() bool {
	s.topic.mu.Lock()
	defer s.topic.mu.Unlock()
	return s.idx.Load() >= 0
}

// goLiveAgain makes s live again once from, the last event sent to it, has
// reached the newest event its topic delivered; end says history had
// nothing after from when it was read. It reports whether the catch-up of
// s is over: live again, or s removed.
func (g *Gateway) goLiveAgain(s *subscription, from streams.ID, end bool) bool {
	t := s.topic
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.idx.Load() < 0 {
		return true // unsubscribed or closed
	}
	if !end || from.Less(t.seen) {
		return false
	}
	if s.last.Less(from) {
		s.last = from
	}
	s.lagging = false
	return true
}

// pager reads the history pages of one lagging subscription, bounded by
// GatewayConfig.HistoryBytes: as many events as fit of the largest size in
// the previous page (MaxData before the first).
type pager struct {
	g     *Gateway
	topic string
	from  streams.ID // the cursor: the last event sent once sent is set
	next  streams.ID // the first dropped event, zero when none was
	sent  bool       // from is an event this catch-up sent
	size  int        // largest event data of the last page
	end   bool       // the last page reached the end of history
}

func (p *pager) count() int {
	return max(1, min(p.g.cfg.HistoryPage, p.g.cfg.HistoryBytes/max(p.size, 1)))
}

// read returns the next page; errTrimmed when history cannot show that it
// holds every event after the cursor.
func (p *pager) read() ([]streams.Event, error) {
	if p.sent {
		return p.after()
	}
	return p.first()
}

// first reads the events after the cursor, or from next on when it is
// set: Resume proves nothing after the cursor was trimmed, or next itself
// is the first event read.
func (p *pager) first() ([]streams.Event, error) {
	since := p.from
	if !p.next.IsZero() {
		since = before(p.next)
	}
	count := p.count()
	r, err := p.g.hist.Resume(p.g.ctx, p.topic, streams.Cursor{Since: since.String()}, streams.Page{Events: count})
	if err != nil {
		return nil, err
	}
	if !r.Recovered && (p.next.IsZero() || len(r.Events) == 0 || r.Events[0].ID != p.next.String()) {
		return nil, errTrimmed
	}
	p.measure(r.Events, count)
	return r.Events, nil
}

// after reads the events after from, an event already sent: it asks for
// from too, and history still holding it proves nothing after it was
// trimmed (trimming removes the oldest entries first).
func (p *pager) after() ([]streams.Event, error) {
	count := p.count()
	events, err := p.g.hist.Range(p.g.ctx, p.topic, before(p.from), count+1)
	if err != nil {
		return nil, err
	}
	if len(events) == 0 || events[0].ID != p.from.String() {
		return nil, errTrimmed
	}
	p.measure(events, count+1)
	return events[1:], nil
}

func (p *pager) measure(events []streams.Event, count int) {
	p.end = len(events) < count
	if len(events) == 0 {
		return
	}
	p.size = 0
	for _, e := range events {
		p.size = max(p.size, len(e.Data))
	}
}

// before returns the greatest ID below id, so that a range after it
// begins with id.
func before(id streams.ID) streams.ID {
	switch {
	case id.Seq > 0:
		return streams.ID{Ms: id.Ms, Seq: id.Seq - 1}
	case id.Ms > 0:
		return streams.ID{Ms: id.Ms - 1, Seq: math.MaxUint64}
	}
	return id
}

// sleep waits d, or less when the Gateway closes, and reports whether it
// is still open.
func (g *Gateway) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-g.ctx.Done():
		return false
	}
}
