package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// liveConn is a Redis pub/sub connection for live channels and the one
// goroutine that owns it (run): only run subscribes, unsubscribes, and
// closes or replaces the connection, and it holds no lock while it waits on
// Redis. Others tell it which topics changed (poke); it compares each with
// Gateway.topics, the one truth of what is wanted, and with what it has
// asked Redis for, so requests need no order between them.
//
// On Redis Cluster a PubSub is bound to the node of its first channel's
// slot, so each partition gets its own; on a single Redis one connection
// carries every partition's channels: go-redis gives each PubSub
// connection 64 KiB of buffers whatever the options say, 4 MiB for 64
// partitions, and each is a connection Redis holds.
//
// A connection lost (an error, a ping without answer, a reply such as
// MOVED, or Redis dropping a channel still wanted because its slot moved)
// ends a session: once its reader has ended and the fan-out shards have
// fanned out what it read, every topic on it starts catching (live events
// wait in its backlog), a new connection subscribes every wanted channel, and each
// topic is caught up from history once its own channel is confirmed on
// the new connection, never before, so no event falls between the history
// read and the live channel (resume.go).
//
// What the current connection was asked for a topic's channel (its phase)
// is kept in the topic (topic.asked), not in a map of liveConn's own: a
// gateway holds tens of thousands of topics, most with one subscriber,
// and a map entry per topic costs as much again as the Gateway.topics
// entry. A channel still asked for whose topic was swept keeps its phase
// in gone until Redis confirms the drop, and a topic made for the name
// meanwhile takes it from there: for any name, the phase is its topic's if
// Gateway.topics has one, else gone's (askedLocked). Both are guarded by
// Gateway.mu and only run changes a phase, except the hand-overs that
// sweepIdle and refTopic make under Gateway.mu.
type liveConn struct {
	g *Gateway

	mu     sync.Mutex
	dirty  map[string]struct{} // topics to compare with what is asked of Redis
	wake   chan struct{}       // capacity 1: dirty has topics
	catch  []*topic            // topics to catch up from history, in order
	queued map[*topic]bool     // the topics in catch
	woken  chan struct{}       // capacity 1: catch has topics

	// Guarded by Gateway.mu; see askedLocked.
	gone map[string]phase // by topic name: channels asked for whose topic was swept
}

// phase is a live channel's state on the current connection.
type phase uint8

const (
	subscribing   phase = iota + 1 // SSUBSCRIBE sent, not confirmed
	subscribed                     // confirmed
	unsubscribing                  // SUNSUBSCRIBE sent, not confirmed
)

// liveHealth is how long a quiet pub/sub connection waits before a ping,
// and then for its answer: a connection that stalls (no reset, no data)
// is found lost within twice this.
const liveHealth = 5 * time.Second

func newLiveConn(g *Gateway) *liveConn {
	return &liveConn{
		g:      g,
		dirty:  make(map[string]struct{}),
		wake:   make(chan struct{}, 1),
		woken:  make(chan struct{}, 1),
		gone:   make(map[string]phase),
		queued: make(map[*topic]bool),
	}
}

// poke tells run that the topics may have to be subscribed or
// unsubscribed. It never blocks.
func (lc *liveConn) poke(names ...string) {
	lc.mu.Lock()
	for _, name := range names {
		lc.dirty[name] = struct{}{}
	}
	lc.mu.Unlock()
	wake(lc.wake)
}

// run owns the connection until the Gateway closes, one session per
// connection, with a growing pause between failed ones.
func (lc *liveConn) run() {
	g := lc.g
	var pause time.Duration
	for {
		healthy, err := lc.session()
		if g.ctx.Err() != nil {
			return
		}
		lc.lose(err)
		if cc, ok := g.cfg.Redis.(*redis.ClusterClient); ok {
			cc.ReloadState(g.ctx) // a slot may have moved
		}
		switch {
		case healthy:
			pause = 50 * time.Millisecond
		case pause < 2*time.Second:
			pause = max(2*pause, 50*time.Millisecond)
		}
		if !g.sleep(pause) {
			return
		}
	}
}

// session serves one connection until it fails or the Gateway closes. It
// reports whether Redis confirmed anything on it, and the failure.
func (lc *liveConn) session() (healthy bool, err error) {
	g := lc.g
	ctx, cancel := context.WithCancel(g.ctx)
	ps := g.cfg.Redis.SSubscribe(ctx) // dials on its first SSUBSCRIBE
	events := make(chan any, 64)
	var done chan struct{} // closed by the reader, started after that first SSUBSCRIBE
	defer func() {
		cancel() // an automatic redial of go-redis stops
		_ = ps.Close()
		if done != nil {
			<-done
			g.fan.drain(g.ctx) // what the lost connection read is fanned out before lose
		}
	}()
	lc.poke(lc.forgetAsked()...)
	for {
		select {
		case <-ctx.Done():
			return healthy, nil
		case <-lc.wake:
			sent, err := lc.reconcile(ctx, ps)
			if err != nil {
				return healthy, err
			}
			if sent && done == nil {
				// Not before: a read on a PubSub without a connection
				// dials one, on Redis Cluster to any node.
				done = make(chan struct{})
				go lc.read(ctx, ps, events, done)
			}
		case ev := <-events:
			if err, ok := ev.(error); ok {
				return healthy, err
			}
			healthy = true
			if err := lc.confirmed(ev.(*redis.Subscription)); err != nil {
				return healthy, err
			}
		}
	}
}

// reconcile asks Redis for the channels of the dirty topics that are
// wanted and not asked for, and drops those asked for and no longer
// wanted. A channel being dropped is asked for again once Redis confirms
// the drop. It reports whether it sent an SSUBSCRIBE.
func (lc *liveConn) reconcile(ctx context.Context, ps *redis.PubSub) (bool, error) {
	g := lc.g
	lc.mu.Lock()
	dirty := lc.dirty
	lc.dirty = make(map[string]struct{})
	lc.mu.Unlock()
	var sub, unsub []string
	var ready []*topic
	g.mu.Lock()
	for name := range dirty {
		t, wanted := g.topics[name]
		switch asked := lc.askedLocked(name); {
		case wanted && asked == 0:
			t.asked = subscribing
			sub = append(sub, t.channel) // go-redis keeps it: the topic's own string
		case wanted && asked == subscribed:
			// Swept and wanted again before this ran: the channel was never
			// dropped, and the new topic is ready at once.
			ready = append(ready, t)
		case !wanted && (asked == subscribing || asked == subscribed):
			lc.gone[name] = unsubscribing
			unsub = append(unsub, g.channel(name))
		}
	}
	g.mu.Unlock()
	for _, t := range ready {
		if t.markReady() {
			lc.queueCatchUp(t)
		}
	}
	if len(sub) > 0 {
		// One command for all: on Redis Cluster they share their
		// partition's slot.
		if err := ps.SSubscribe(ctx, sub...); err != nil {
			return false, fmt.Errorf("subscribing %d live channels: %w", len(sub), err)
		}
	}
	if len(unsub) > 0 {
		if err := ps.SUnsubscribe(ctx, unsub...); err != nil {
			return len(sub) > 0, fmt.Errorf("unsubscribing %d live channels: %w", len(unsub), err)
		}
	}
	return len(sub) > 0, nil
}

// confirmed takes Redis's confirmation of a channel asked for or dropped.
func (lc *liveConn) confirmed(m *redis.Subscription) error {
	g := lc.g
	_, name, ok := g.cfg.Keys.LiveTopic(m.Channel)
	if !ok {
		return nil
	}
	switch m.Kind {
	case "ssubscribe":
		g.mu.Lock()
		asked, t := lc.advanceLocked(name, subscribing, subscribed)
		g.mu.Unlock()
		switch {
		case asked != subscribing:
			return nil // a drop was asked for since
		case t == nil:
			lc.poke(name) // swept meanwhile: reconcile drops it
			return nil
		}
		if t.markReady() {
			lc.queueCatchUp(t)
		}
	case "sunsubscribe":
		g.mu.Lock()
		asked, _ := lc.advanceLocked(name, unsubscribing, 0)
		g.mu.Unlock()
		switch asked {
		case unsubscribing:
			lc.poke(name) // wanted again meanwhile: asked for again
		case subscribing, subscribed:
			return fmt.Errorf("redis unsubscribed %s: its slot moved", m.Channel)
		}
	}
	return nil
}

// read receives from ps until it fails: messages go to their shards to
// be fanned out (gateway_shards.go), confirmations and the failure to run.
func (lc *liveConn) read(ctx context.Context, ps *redis.PubSub, events chan<- any, done chan<- struct{}) {
	defer close(done)
	g := lc.g
	pinged := false
	send := func(ev any) bool {
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := ps.ReceiveTimeout(ctx, liveHealth)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if pinged {
					err = errors.New("redis did not answer a ping")
				} else if err = ps.Ping(ctx); err == nil {
					pinged = true
					continue
				}
			}
			send(err)
			return
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			if !g.fan.push(ctx, m.Channel, m.Payload) {
				return
			}
		case *redis.Subscription:
			if !send(m) {
				return
			}
		}
	}
}

// lose starts a catch-up of every topic the lost connection carried: their
// live events wait until it is done.
func (lc *liveConn) lose(err error) {
	ts := lc.topics()
	n := 0
	for _, t := range ts {
		if t.startCatching() {
			n++
		}
	}
	if n > 0 {
		lc.g.cfg.Logger.Warn("live pub/sub connection lost; will catch up from history", "topics", n, "err", err)
	}
}

// topics returns the topics whose live channels lc carries.
func (lc *liveConn) topics() []*topic {
	g := lc.g
	g.mu.RLock()
	defer g.mu.RUnlock()
	var ts []*topic
	for _, t := range g.topics {
		if g.parts[t.p] == lc {
			ts = append(ts, t)
		}
	}
	return ts
}

// forgetAsked starts a new connection, which nothing was asked of, and
// returns the names of the topics whose channels lc carries.
func (lc *liveConn) forgetAsked() []string {
	g := lc.g
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(lc.gone)
	var names []string
	for name, t := range g.topics {
		if g.parts[t.p] == lc {
			t.asked = 0
			names = append(names, name)
		}
	}
	return names
}

// askedLocked returns what the current connection was asked for the
// channel of topic name: its topic's phase, or gone's once it was swept.
// Under g.mu.
func (lc *liveConn) askedLocked(name string) phase {
	if t, ok := lc.g.topics[name]; ok {
		return t.asked
	}
	return lc.gone[name]
}

// advanceLocked moves what the current connection was asked for the
// channel of topic name from from to to, if it is at from, and returns
// what it was asked before, with the topic (nil once swept): one lookup
// for a confirmation, which may come for every topic a subscribe burst
// makes. Under g.mu, held for writing.
func (lc *liveConn) advanceLocked(name string, from, to phase) (asked phase, t *topic) {
	if t = lc.g.topics[name]; t != nil {
		if asked = t.asked; asked == from {
			t.asked = to
		}
		return asked, t
	}
	if asked = lc.gone[name]; asked == from {
		if to == 0 {
			delete(lc.gone, name)
		} else {
			lc.gone[name] = to
		}
	}
	return asked, nil
}

// liveLocked returns the pub/sub connection for partition p's channels,
// starting its goroutines when it is new; nil once the Gateway is closed.
// Under g.mu, which Close takes to cancel: no goroutine starts after Close
// began waiting.
func (g *Gateway) liveLocked(p int) *liveConn {
	if lc := g.parts[p]; lc != nil {
		return lc
	}
	if g.ctx.Err() != nil {
		return nil
	}
	lc := g.shared
	if lc == nil {
		lc = newLiveConn(g)
		g.wg.Add(2)
		go func() {
			defer g.wg.Done()
			lc.run()
		}()
		go func() {
			defer g.wg.Done()
			lc.catchUps()
		}()
		if _, cluster := g.cfg.Redis.(*redis.ClusterClient); !cluster {
			g.shared = lc
		}
	}
	g.parts[p] = lc
	return lc
}

// channel returns the live channel of topic name.
func (g *Gateway) channel(name string) string {
	return g.cfg.Keys.Live(streams.Partition(name, g.cfg.Partitions), name)
}

func (g *Gateway) topicNamed(name string) *topic {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.topics[name]
}

// wake tells the goroutine that waits on ch, a channel of capacity 1, that
// there is work; it never blocks, and wakes it once for many calls.
func wake(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
