package bus

// Acknowledgements. A subject's cursor per topic lives in the topic's
// partition, in the hash Keys.Acked: field "s:<subject>" holds "<id>
// <seq>", the newest event the subject acknowledged and its sequence
// number, and field "max" the highest ID any subject acknowledged, which
// deadlines are checked against (see deadline.go).
//
// The hash lives as long as the topic's history: an ack extends its
// expiry to the history's, and the owner's apply script extends both
// together. So unread (head seq - acked seq) is exact without counting.
// A topic with a deadline still to be checked keeps the hash (field "due",
// the latest) until the history TTL after it, even when its history
// expires first: a cursor that then outlives its sequence is below the
// next life's max-deleted-entry-id mark, which streams.History reads as
// of an earlier life.
//
// An ack costs its connection no Redis round trip: it is gathered per
// (subject, topic), and one goroutine owned by the Gateway writes what
// gathered every AckFlush, one script call per topic, all in one
// pipeline, which moves each cursor to the highest valid ID. What needs Redis to check
// (is the ID an event of the topic?) is checked there, and a bad_id error
// is sent to the connection afterwards, if it is still open.

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// ackKey identifies the acks that coalesce into one cursor move.
type ackKey struct{ subject, topic string }

// ackCandidate is an ID one connection acknowledged on a key since the
// last flush.
type ackCandidate struct {
	cl *client
	id streams.ID
}

// acker gathers acks and writes them in batches.
type acker struct {
	g       *Gateway
	mu      sync.Mutex
	pending map[ackKey][]ackCandidate
	waiting map[*client]int // candidates of a connection in pending; only connections with some
	wake    chan struct{}
}

func newAcker(g *Gateway) *acker {
	return &acker{g: g, pending: map[ackKey][]ackCandidate{}, waiting: map[*client]int{}, wake: make(chan struct{}, 1)}
}

// ack serves {"type":"ack","topic":T,"id":ID}. It needs no subscription to
// the topic (a device may mark read what it listed over HTTP), only a
// token that allows it.
func (g *Gateway) ack(c *ws.Conn, cl *client, m clientMessage) {
	switch {
	case cl.subject() == "":
		g.sendError(c, codeNoSubject, m.Topic, "this connection has no subject to acknowledge for (a token with sub, or ?user= on an insecure gateway)")
		return
	case streams.ValidateTopic(m.Topic) != nil:
		g.sendError(c, codeBadTopic, m.Topic, "topic must be 1-256 bytes of UTF-8 without spaces or control characters")
		return
	}
	id, err := streams.ParseID(m.ID)
	if err != nil || id.IsZero() {
		g.sendError(c, codeBadID, m.Topic, "id must be an event ID such as 1718000000000-0")
		return
	}
	if !cl.allows(m.Topic) {
		g.sendError(c, codeForbidden, m.Topic, forbiddenText(m.Topic))
		return
	}
	if !g.acks.add(cl, m.Topic, id) {
		g.sendError(c, codeTooManyAcks, m.Topic, "too many acknowledgements waiting to be written; retry")
	}
}

// add queues an ack; false when cl has MaxAcks in the batch being
// gathered already, none of them on topic.
func (a *acker) add(cl *client, topic string, id streams.ID) bool {
	k := ackKey{cl.subject(), topic}
	a.mu.Lock()
	cands := a.pending[k]
	// Every distinct ID is kept, not only a connection's highest, up to
	// MaxAcks a connection: a higher one may turn out not to be an event
	// (bad_id), and a valid lower one must still move the cursor. The
	// script tries them highest first. Past the bound only the highest
	// are kept: a lower valid ID replaced is lost if all above it are
	// bad_id (each of which is answered).
	low := -1 // cl's lowest candidate on k
	for i := range cands {
		if cands[i].cl != cl {
			continue
		}
		if cands[i].id == id {
			a.mu.Unlock()
			return true
		}
		if low < 0 || cands[i].id.Less(cands[low].id) {
			low = i
		}
	}
	if a.waiting[cl] >= a.g.cfg.MaxAcks {
		// At the bound, a connection acking events in order (a catch-up
		// of hundreds within AckFlush) keeps its highest: the new ID
		// takes the place of its lowest on the key, or is below all of
		// them and moves the cursor no further than they do. Only a
		// connection acking more than MaxAcks topics in one batch is
		// refused.
		if low < 0 {
			a.mu.Unlock()
			return false
		}
		if cands[low].id.Less(id) {
			cands[low].id = id
		}
		a.mu.Unlock()
		return true
	}
	a.waiting[cl]++
	a.pending[k] = append(cands, ackCandidate{cl: cl, id: id})
	first := len(a.pending) == 1 && len(cands) == 0
	a.mu.Unlock()
	if first {
		wake(a.wake)
	}
	return true
}

// run flushes gathered acks AckFlush after the first of a batch arrives,
// until the Gateway closes; then it flushes what is left. An idle gateway
// does not wake.
func (a *acker) run(ctx context.Context) {
	// Batches run the script in pipelines, where EVALSHA cannot fall back
	// to EVAL: load it now (flush loads it again if Redis lost it).
	_ = ackScript.Load(ctx, a.g.cfg.Redis).Err()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			a.final()
			return
		case <-a.wake:
		}
		timer.Reset(a.g.cfg.AckFlush)
		select {
		case <-ctx.Done():
			timer.Stop()
			a.final()
			return
		case <-timer.C:
		}
		a.final() // a batch begun before Close is written, not cut off by it
	}
}

// ackWriteTimeout bounds one batch's write, and so how long Close waits
// for the last one.
const ackWriteTimeout = 2 * time.Second

// final writes what is gathered, whether or not the Gateway is closing:
// Close waits for it (bounded by ackWriteTimeout), and acks taken into a
// batch are not lost to Close's cancellation.
func (a *acker) final() {
	ctx, cancel := context.WithTimeout(context.Background(), ackWriteTimeout)
	defer cancel()
	a.flush(ctx, a.take())
}

// take returns the batch gathered and begins the next, with room for
// MaxAcks a connection again: batches are written one at a time, so a
// connection holds at most twice MaxAcks, whatever Redis does.
func (a *acker) take() map[ackKey][]ackCandidate {
	a.mu.Lock()
	defer a.mu.Unlock()
	batch := a.pending
	a.pending = make(map[ackKey][]ackCandidate, len(batch))
	clear(a.waiting)
	return batch
}

// ackCall is one script call: the acks of one topic.
type ackCall struct {
	topic string
	keys  []string
	args  []any
	cands []ackCandidate // in the order of the script's statuses
	cmd   *redis.Cmd
}

// flush writes one batch: a script call per topic, in one pipeline. A
// NOSCRIPT (a restarted Redis) loads the script and runs the batch again,
// which is safe: a cursor only moves forward.
func (a *acker) flush(ctx context.Context, batch map[ackKey][]ackCandidate) {
	if len(batch) == 0 {
		return
	}
	calls := a.calls(batch)
	err := a.exec(ctx, calls)
	if classify(err) == kindNoScript {
		_ = ackScript.Load(ctx, a.g.cfg.Redis).Err()
		err = a.exec(ctx, calls)
	}
	for _, call := range calls {
		statuses, cerr := call.cmd.Int64Slice()
		for i, cand := range call.cands {
			switch {
			case cerr != nil:
				a.g.sendError(cand.cl.conn(), codeUnavailable, call.topic, "the acknowledgement was not written: the bus is unavailable; retry")
			case i < len(statuses) && statuses[i] == 1:
				a.g.sendError(cand.cl.conn(), codeBadID, call.topic, "id "+cand.id.String()+" is not an event of this topic at or below its head (or it was trimmed from history before this acknowledgement: ack a retained event)")
			}
		}
	}
	if err != nil {
		a.g.cfg.Logger.Warn("writing acknowledgements", "topics", len(calls), "err", err)
	}
	a.g.stats.acks.Add(uint64(len(batch)))
}

// calls groups a batch by topic, each subject's candidates highest first.
func (a *acker) calls(batch map[ackKey][]ackCandidate) []*ackCall {
	byTopic := map[string]*ackCall{}
	var calls []*ackCall
	for k, cands := range batch {
		call := byTopic[k.topic]
		if call == nil {
			p := streams.Partition(k.topic, a.g.cfg.Partitions)
			call = &ackCall{topic: k.topic, keys: []string{a.g.cfg.Keys.Topic(p, k.topic), a.g.cfg.Keys.Acked(p, k.topic)}}
			byTopic[k.topic] = call
			calls = append(calls, call)
		}
		slices.SortFunc(cands, func(x, y ackCandidate) int {
			switch {
			case y.id.Less(x.id):
				return -1
			case x.id.Less(y.id):
				return 1
			}
			return 0
		})
		call.args = append(call.args, k.subject, len(cands))
		for _, cand := range cands {
			call.args = append(call.args, cand.id.String())
		}
		call.cands = append(call.cands, cands...)
	}
	return calls
}

func (a *acker) exec(ctx context.Context, calls []*ackCall) error {
	pipe := a.g.cfg.Redis.Pipeline()
	for _, call := range calls {
		call.cmd = ackScript.EvalSha(ctx, pipe, call.keys, call.args...)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && classify(err) != kindNil {
		for _, call := range calls {
			if classify(call.cmd.Err()) == kindNoScript {
				return call.cmd.Err()
			}
		}
	}
	return err
}
