package bus

import (
	"errors"
	"slices"
	"time"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// subscribe serves one subscribe request: live channel first, then
// history after the cursor, then the live events held meanwhile, so there
// is no gap and no duplicate between history and live (resume.go says
// why).
func (g *Gateway) subscribe(c clientConn, cl *client, m clientMessage) {
	if err := streams.ValidateTopic(m.Topic); err != nil {
		g.sendError(c, codeBadTopic, m.Topic, "topic must be 1-256 bytes of UTF-8 without spaces or control characters")
		return
	}
	if m.Since != nil && *m.Since == sinceAcked {
		if cl.subject() == "" {
			g.sendError(c, codeNoSubject, m.Topic, `since "acked" needs a subject: a token with sub, or ?user= on an insecure gateway`)
			return
		}
	} else if m.Since != nil {
		if _, err := streams.ParseID(*m.Since); err != nil {
			g.sendError(c, codeBadSince, m.Topic, `since must be a stream ID such as 1718000000000-0, 0, or "acked"`)
			return
		}
	}
	if _, _, err := parseSeq(m.Seq); err != nil {
		g.sendError(c, codeBadSeq, m.Topic, "seq must be the non-negative integer seq of the event since names")
		return
	}
	if !cl.allows(m.Topic) {
		g.sendError(c, codeForbidden, m.Topic, forbiddenText(m.Topic))
		return
	}
	if code, msg := cl.admit(m.Topic, g.cfg.MaxSubscriptions); code != "" {
		g.sendError(c, code, m.Topic, msg)
		return
	}
	t := g.refTopic(m.Topic)
	s := cl.newSubscription(t)
	if code, msg := cl.add(m.Topic, s, g.cfg.MaxSubscriptions); code != "" {
		g.unrefTopic(t)
		g.sendError(c, code, m.Topic, msg)
		return
	}
	t.mu.Lock()
	t.addLocked(s)
	t.mu.Unlock()
	g.stats.subscriptions.Add(1)
	if cl.isClosed() {
		g.removeSub(s) // Closed ran before s joined its topic
		return
	}
	if !g.waitReady(t) {
		g.unavailable(c, cl, s)
		return
	}
	if !g.sendHistory(c, cl, s, m) {
		g.unavailable(c, cl, s)
		return
	}
	g.goLive(s)
}

// readOn reads the page of topic's history after last, an event already
// sent whose data was lastSize bytes. It asks for last too: history still
// holding it proves nothing after it was trimmed (trimming removes the
// oldest entries first), and without it the page is errTrimmed. It tries
// four times over about 0.7 s before it gives up on Redis.
func (g *Gateway) readOn(topic string, last streams.ID, lastSize int) (events []streams.Event, more bool, err error) {
	page := g.page()
	page.Events++
	if page.Bytes > 0 {
		page.Bytes += lastSize
	}
	for pause := 100 * time.Millisecond; ; pause *= 2 {
		events, more, err = g.hist.ReadPage(g.ctx, topic, before(last), page)
		if err == nil && len(events) == 1 && more {
			// The event after last is larger than a page's bytes (written
			// under a greater MaxData): it comes alone.
			events, more, err = g.hist.ReadPage(g.ctx, topic, before(last), streams.Page{Events: 2})
		}
		if err == nil {
			break
		}
		if pause > 400*time.Millisecond || !g.sleep(pause) {
			return nil, false, err
		}
	}
	if len(events) == 0 || events[0].ID != last.String() {
		return nil, false, errTrimmed
	}
	return events[1:], more, nil
}

// page is the bound of a history read to resume a client or catch a topic
// up: HistoryPage events, HistoryBytes of data.
func (g *Gateway) page() streams.Page {
	return streams.Page{Events: g.cfg.HistoryPage, Bytes: g.cfg.HistoryBytes}
}

func (g *Gateway) unavailable(c clientConn, cl *client, s *subscription) {
	cl.remove(s)
	g.removeSub(s)
	g.sendError(c, codeUnavailable, s.topic.name(), "the bus is unavailable; retry")
}

func (g *Gateway) waitReady(t *topic) bool {
	ready, wait := t.readyOrWait()
	if ready {
		return true // the common case: no timer, no channel
	}
	timer := time.NewTimer(g.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-wait:
		return true
	case <-timer.C:
		return false
	case <-g.ctx.Done():
		return false
	}
}

// sendHistory sends subscribed and the events after the cursor; it sets
// s.last (s is not live yet, so no one else reads it). Concurrent
// subscriptions from the same cursor share one read (see coalescer). It
// reports false when the client is to be told unavailable: nothing was
// sent.
func (g *Gateway) sendHistory(c clientConn, cl *client, s *subscription, m clientMessage) bool {
	key := readKey{topic: m.Topic, epoch: m.Epoch, head: m.Since == nil}
	if !key.head {
		key.since = *m.Since
		key.seq, key.hasSeq, _ = parseSeq(m.Seq) // checked by subscribe
		g.stats.resumes.Add(1)
	}
	if key.since == sinceAcked {
		// The cursor first (one round trip more than other resumes), then
		// a resume from it like any other, which shares reads.
		a, err := g.hist.Acked(g.ctx, m.Topic, cl.subject())
		if err != nil {
			g.cfg.Logger.Warn("reading acknowledged cursor", "topic", m.Topic, "err", err)
			return false
		}
		key.since, key.seq, key.hasSeq = "0", 0, false
		if !a.ID.IsZero() {
			key.since, key.seq, key.hasSeq = a.ID.String(), a.Seq, a.Seq > 0
		}
	}
	h := g.reads.do(key, cl.subject(), func(subjects []string) history { return g.readHistory(key, subjects) })
	if h.err == nil && h.info.Epoch == "" {
		h.err = errNoEpoch
	}
	if h.err != nil {
		g.cfg.Logger.Warn("reading topic history", "topic", m.Topic, "err", h.err)
		return false
	}
	if !key.head && !h.recovered {
		g.stats.notRecovered.Add(1)
		if h.info.MissedKnown {
			g.stats.missed.Add(h.info.Missed)
		}
	}
	g.noteEpoch(s.topic, h.info.Epoch)
	if a, ok := h.acked[cl.subject()]; ok && cl.subject() != "" {
		info := h.info
		info.Acked, info.Unread, info.HasAcked = a.ID, a.Unread, true
		_ = c.Send(ws.TextFrame(AppendSubscribed(nil, info)))
	} else {
		_ = c.Send(h.subscribed)
	}
	s.last = h.last
	for i, f := range h.frames {
		s.last = h.ids[i]
		if c.SendWait(f) != nil {
			return true // closed: Closed cleans up
		}
	}
	for more, size := h.more, h.lastSize; more; {
		events, next, err := g.readOn(m.Topic, s.last, size)
		if err != nil {
			// Past subscribed, unavailable would leave the client thinking
			// it is subscribed: it resumes from its cursor instead, and
			// learns what was trimmed, if that is why.
			reason := "history could not be read: reconnect and resume"
			if errors.Is(err, errTrimmed) {
				reason = "events were trimmed from history before they could be sent: reconnect and resume"
			} else {
				g.cfg.Logger.Warn("reading topic history", "topic", m.Topic, "err", err)
			}
			c.Close(ws.CloseSlowConsumer, reason)
			return true // Closed cleans up
		}
		for _, e := range events {
			s.last, size = streams.MustParseID(e.ID), len(e.Data)
			if c.SendWait(eventFrame(m.Topic, e)) != nil {
				return true
			}
		}
		more = next
	}
	return true
}

// errNoEpoch is a partition without an epoch: Redis lost its data (a
// restart without persistence) and the partition's owner has not yet
// recreated it. A subscriber told an empty epoch would hold a cursor that
// no later loss could be checked against: it is told unavailable, and
// retries.
var errNoEpoch = errors.New("bus: the partition has no epoch yet (Redis lost its data?)")

// readHistory reads what a subscription with key is sent first: the head
// of the topic, or the first page after the cursor, encoded; and the
// acknowledged cursors of subjects, in the same round trip.
func (g *Gateway) readHistory(key readKey, subjects []string) history {
	if key.head {
		head, err := g.hist.Head(g.ctx, key.topic, subjects...)
		info := Subscribed{Topic: key.topic, Recovered: true, Epoch: head.Epoch, Head: head.ID, HeadSeq: head.Seq}
		return history{err: err, last: head.ID, recovered: true, info: info, acked: head.Acked,
			subscribed: ws.TextFrame(AppendSubscribed(nil, info))}
	}
	cursor := streams.Cursor{Since: key.since, Seq: key.seq, HasSeq: key.hasSeq, Epoch: key.epoch}
	r, err := g.hist.Resume(g.ctx, key.topic, cursor, g.page(), subjects...)
	if err != nil {
		return history{err: err}
	}
	info := Subscribed{
		Topic: key.topic, Recovered: r.Recovered, Epoch: r.Epoch, Head: r.Head, HeadSeq: r.HeadSeq,
		Missed: r.Missed, MissedKnown: r.MissedKnown && !r.Recovered, // missed goes with recovered:false
	}
	h := history{
		subscribed: ws.TextFrame(AppendSubscribed(nil, info)),
		info:       info,
		acked:      r.Acked,
		recovered:  r.Recovered,
		more:       r.More,
		frames:     make([]ws.Frame, len(r.Events)),
		ids:        make([]streams.ID, len(r.Events)),
	}
	if r.Recovered {
		h.last, _ = streams.ParseID(key.since)
	} // else the cursor is not trusted: every event sent or held is new to it
	for i, e := range r.Events {
		h.frames[i] = eventFrame(key.topic, e)
		h.ids[i] = streams.MustParseID(e.ID)
		h.lastSize = len(e.Data)
	}
	return h
}

// goLive sends the live events held while history was sent, dropping those
// history already had, and makes s receive live events directly.
func (g *Gateway) goLive(s *subscription) {
	t := s.topic
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.pending != nil {
		for _, ev := range *s.pending {
			if s.last.Less(ev.id) && !s.offer(ev) {
				break // lagging: the rest comes from history (gateway_lag.go)
			}
		}
	}
	s.pending, s.live = nil, true
}

// admit checks that topic may be added before any Redis work is done.
func (cl *client) admit(topic string, max int) (code, msg string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.checkLocked(topic, max)
}

func (cl *client) add(topic string, s *subscription, max int) (code, msg string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if code, msg = cl.checkLocked(topic, max); code == "" {
		cl.subs = append(cl.subs, s)
	}
	return code, msg
}

func (cl *client) checkLocked(topic string, max int) (code, msg string) {
	switch {
	case cl.closed:
		return codeUnavailable, "connection closing"
	case cl.findLocked(topic) != nil:
		return codeAlreadySubscribed, "already subscribed to this topic"
	case len(cl.subs) >= max:
		return codeTooMany, "too many subscriptions on this connection"
	}
	return "", ""
}

func (cl *client) remove(s *subscription) {
	cl.mu.Lock()
	cl.removeLocked(s)
	cl.mu.Unlock()
}

func (cl *client) findLocked(topic string) *subscription {
	for _, s := range cl.subs {
		if s.topic.name() == topic {
			return s
		}
	}
	return nil
}

func (cl *client) removeLocked(s *subscription) {
	if i := slices.Index(cl.subs, s); i >= 0 {
		cl.subs = slices.Delete(cl.subs, i, i+1)
	}
}

// allows reports whether the client's token lets it read topic. The
// canary topics are the node's canary client's alone (auth.go).
func (cl *client) allows(topic string) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if IsCanaryTopic(topic) {
		return cl.claims == canaryClaims
	}
	return cl.claims == nil || cl.claims.Allows(topic)
}

func (cl *client) isClosed() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.closed
}
