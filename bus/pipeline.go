package bus

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// trimEvery is how often an owner trims its ingress to the retention.
const trimEvery = time.Minute

// runPartition moves partition p's ingress into history and pub/sub while
// the lease holds: it checks the partition and claims what earlier owners
// left pending, then runs one step after another (see partitionRun.next)
// until the lease is lost or ctx is done. No entry enters this node's
// pending list but through a script that checks the lease (see readScript
// and applyScript).
func (o *Owner) runPartition(ctx context.Context, l *lease) error {
	if err := o.ensure(ctx, l); err != nil {
		return err
	}
	if err := o.claim(ctx, l); err != nil {
		return err
	}
	l.nextDue = 0 // unknown: the first step reads it
	r := &partitionRun{
		o: o,
		l: l,
		// Partitions taken together (a node starting) trim at different
		// seconds of the minute, not all in one.
		lastTrim: time.Now().Add(-rand.N(trimEvery)),
	}
	for ctx.Err() == nil {
		if err := r.settle(ctx, r.next(ctx)); err != nil {
			return err
		}
	}
	return nil
}

// partitionRun is where one run of a partition's pipeline is. Only that
// pipeline's goroutine touches it.
type partitionRun struct {
	o *Owner
	l *lease
	// after is the ID new entries come after, once the pipeline has
	// recovered; "" while it recovers (reads the pending entries, then
	// the group's position).
	after string
	// recheck: the partition's data may have changed under the pipeline
	// (an error from Redis, the group not where it was left): check it
	// before reading on.
	recheck  bool
	lastTrim time.Time
	backoff  time.Duration // before retrying a failed step; 0 after a success
}

// next runs the pipeline's next step, the first of these that applies:
// escalate the deadlines due, check the partition, trim the ingress,
// recover (apply the entries left pending, then find where the group is),
// follow the ingress (apply new entries).
func (r *partitionRun) next(ctx context.Context) error {
	switch {
	case r.deadlineDue():
		return r.o.escalateDue(ctx, r.l)
	case r.recheck:
		return r.check(ctx)
	case time.Since(r.lastTrim) > trimEvery:
		return r.trim(ctx)
	case r.after == "":
		return r.recover(ctx)
	default:
		return r.follow(ctx)
	}
}

// deadlineDue reports whether a deadline of the partition is due, or when
// the next one is is not known yet.
func (r *partitionRun) deadlineDue() bool {
	due := r.l.nextDue
	return due == 0 || due > 0 && time.Now().UnixMilli() >= due
}

// check makes sure the partition's stream, group and epoch are there and
// its data has not gone back in time (see ensure).
func (r *partitionRun) check(ctx context.Context) error {
	if err := r.o.ensure(ctx, r.l); err != nil {
		return err
	}
	r.recheck = false
	return nil
}

// trim drops the ingress entries older than the retention (see
// Owner.trim); it is due again in trimEvery, whether it failed or not.
func (r *partitionRun) trim(ctx context.Context) error {
	r.lastTrim = time.Now()
	return r.o.trim(ctx, r.l)
}

// recover applies a batch of the entries pending under this node. With
// none left it takes the group's position as where new entries come
// after, unless the group has delivered less than this node applied: then
// the partition is checked first.
func (r *partitionRun) recover(ctx context.Context) error {
	msgs, after, err := r.o.readPending(ctx, r.l)
	if err != nil {
		return err
	}
	if after != "" && r.o.behind(r.l, after) {
		r.recheck = true
		return nil
	}
	r.after = after
	return r.o.apply(ctx, r.l, msgs, "")
}

// follow waits for entries after r.after and applies them, which moves
// the group past them. Idle for a whole wait, it recovers next: reading on
// from the group's position checks the group is where it was left (an
// entry under an ID at or below after, added after Redis went back in
// time, would wait here unseen).
func (r *partitionRun) follow(ctx context.Context) error {
	msgs, err := r.o.readNew(ctx, r.l.p, r.after, r.o.block(r.l))
	if err == nil {
		err = r.o.apply(ctx, r.l, msgs, r.after)
	}
	switch {
	case err != nil:
		return err
	case len(msgs) == 0:
		r.after = ""
	default:
		r.after = msgs[len(msgs)-1].ID
	}
	return nil
}

// settle deals with a step's error: after any, the pipeline checks the
// partition and recovers before it reads on. It returns ErrLeaseLost when
// the pipeline must stop; a failing Redis is retried after a backoff.
func (r *partitionRun) settle(ctx context.Context, err error) error {
	if err != nil {
		r.after, r.recheck = "", true
	}
	switch kind := classify(err); {
	case kind == kindNone || kind == kindTakeRefused:
		r.backoff = 0
	case ctx.Err() != nil:
		// Stopping: the error is the stop's, and the run ends.
	case kind == kindLeaseLost:
		r.o.stats.lost.Add(1)
		return ErrLeaseLost
	case kind == kindNoGroup:
		// The stream or group vanished: the partition's data was lost,
		// and the check (next) recreates them under a new epoch.
	default:
		r.backoff = min(max(2*r.backoff, 50*time.Millisecond), 2*time.Second)
		r.o.cfg.Logger.Warn("partition pipeline", "partition", r.l.p, "err", err, "retry_in", r.backoff)
		select {
		case <-ctx.Done():
		case <-time.After(r.backoff):
		}
	}
	return nil
}

// behind reports whether the consumer group has delivered less than this
// node applied (under the lease's epoch), which only a Redis that went
// back in time does (ensure then renews the epoch).
func (o *Owner) behind(l *lease, delivered string) bool {
	m := o.applied[l.p]
	id, err := streams.ParseID(delivered)
	return err == nil && m.epoch == l.epoch && id.Less(m.id)
}

// readPending reads, fenced by the lease, a batch of the entries pending
// under this node. When there are none it returns the ID that new entries
// come after instead.
func (o *Owner) readPending(ctx context.Context, l *lease) (msgs []redis.XMessage, after string, err error) {
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(l.p)}
	res, err := readScript.Run(ctx, o.cfg.Redis, keys, l.value, streams.Group, o.cfg.Node, o.cfg.Batch).Result()
	if err != nil {
		return nil, "", err
	}
	if id, ok := res.(string); ok {
		return nil, id, nil
	}
	msgs, err = xMessages(res)
	return msgs, "", err
}

// block is how long the next read may wait: the configured Block, or
// until the partition's next deadline is due.
func (o *Owner) block(l *lease) time.Duration {
	if l.nextDue <= 0 {
		return o.cfg.Block
	}
	return min(o.cfg.Block, max(time.Until(time.UnixMilli(l.nextDue)), time.Millisecond))
}

// readNew waits, for block at most, for entries of partition p after the
// ID after, and returns a batch of them. It reads without the consumer
// group, so it takes nothing: apply takes them, if the lease still holds.
func (o *Owner) readNew(ctx context.Context, p int, after string, block time.Duration) ([]redis.XMessage, error) {
	res, err := o.cfg.Redis.XRead(ctx, &redis.XReadArgs{
		Streams: []string{o.cfg.Keys.Ingress(p), after},
		Count:   int64(o.cfg.Batch),
		Block:   block,
	}).Result()
	switch classify(err) {
	case kindNone:
		return res[0].Messages, nil
	case kindNil:
		return nil, nil // nothing new within block
	}
	return nil, err
}

// xMessages converts entries as a script returns them, each {id, {field,
// value, ...}} (or {id, nil} for an entry deleted while pending).
func xMessages(res any) ([]redis.XMessage, error) {
	entries, ok := res.([]any)
	if !ok {
		return nil, fmt.Errorf("reading ingress: unexpected reply %T", res)
	}
	msgs := make([]redis.XMessage, len(entries))
	for i, e := range entries {
		pair, ok := e.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("reading ingress: unexpected entry %v", e)
		}
		id, _ := pair[0].(string)
		fields, _ := pair[1].([]any)
		values := make(map[string]any, len(fields)/2)
		for j := 0; j+1 < len(fields); j += 2 {
			if k, ok := fields[j].(string); ok {
				values[k] = fields[j+1]
			}
		}
		msgs[i] = redis.XMessage{ID: id, Values: values}
	}
	return msgs, nil
}

// ensure recreates a lost stream, group or epoch of the partition, and
// renews the epoch if the consumer group went back below the last entry
// this node applied under it: Redis lost its newest writes, and clients'
// cursors of that epoch cannot be trusted.
func (o *Owner) ensure(ctx context.Context, l *lease) error {
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(l.p), o.cfg.Keys.PartitionMeta(l.p)}
	m := o.applied[l.p]
	last := ""
	if !m.id.IsZero() {
		last = m.id.String()
	}
	res, err := ensureScript.Run(ctx, o.cfg.Redis, keys, l.value, streams.Group, streams.NewEpoch(), m.epoch, last).Slice()
	if err != nil {
		if classify(err) == kindLeaseLost {
			return ErrLeaseLost
		}
		return fmt.Errorf("checking partition %d: %w", l.p, err)
	}
	if len(res) != 2 {
		return fmt.Errorf("checking partition %d: unexpected reply %v", l.p, res)
	}
	status, _ := res[0].(int64)
	l.epoch, _ = res[1].(string)
	switch status {
	case 1:
		o.cfg.Logger.Warn("partition data missing; epoch renewed", "partition", l.p)
		o.stats.epochs.Add(1)
	case 2:
		o.cfg.Logger.Warn("partition data went back in time; epoch renewed", "partition", l.p, "last_applied", last)
		o.stats.epochs.Add(1)
		o.applied[l.p] = mark{}
	}
	return nil
}

// claim takes over the entries that other consumers (earlier owners) left
// pending. The lease makes this node the partition's only reader, so they
// are claimed whatever their idle time; the claim is fenced by it too.
func (o *Owner) claim(ctx context.Context, l *lease) error {
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(l.p)}
	start := "0-0"
	for {
		next, err := claimScript.Run(ctx, o.cfg.Redis, keys, l.value, streams.Group, o.cfg.Node, start, o.cfg.Batch).Text()
		if classify(err) == kindLeaseLost {
			return ErrLeaseLost
		}
		if err != nil {
			return fmt.Errorf("claiming pending entries of partition %d: %w", l.p, err)
		}
		if next == "0-0" {
			return nil
		}
		start = next
	}
}

// apply validates a batch and applies it with one fenced script call. A
// batch read outside the consumer group, after the ID after, the script
// moves the group past; after is "" for entries already pending, which it
// acknowledges.
// Misrouted entries are first forwarded to their partition (a crash
// between forward and acknowledgement forwards again: at least once).
func (o *Owner) apply(ctx context.Context, l *lease, msgs []redis.XMessage, after string) error {
	if len(msgs) == 0 {
		return nil
	}
	start := time.Now()
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(l.p), o.cfg.Keys.Dead(l.p), o.cfg.Keys.Deadlines(l.p)}
	args := []any{l.value, streams.Group, o.cfg.HistoryLen, o.cfg.HistoryTTL.Milliseconds(), len(msgs), after, msgs[len(msgs)-1].ID, o.cfg.Node}
	nextDue := l.nextDue
	var dead, forwarded uint64
	// The tails of the batch's events (the script puts each one's ID and
	// seq in front) are encoded back to back in the lease's scratch
	// buffer (each entry's data copied in first, to be read as bytes), and
	// sliced into args once the buffer has stopped growing.
	buf := l.scratch[:0]
	type span struct{ arg, from, to int }
	var spans []span
	for _, m := range msgs {
		e, err := streams.DecodeEntry(m.ID, m.Values, o.cfg.MaxData)
		switch {
		case err != nil:
			topic, _ := m.Values["topic"].(string)
			data, _ := m.Values["data"].(string)
			args = append(args, "d", m.ID, strings.TrimPrefix(err.Error(), "streams: "), topic, data)
			dead++
		case streams.Partition(e.Topic, o.cfg.Partitions) != l.p:
			if err := o.forward(ctx, l, e); err != nil {
				return err
			}
			args = append(args, "a", m.ID)
			forwarded++
		default:
			d := len(buf)
			buf = append(buf, e.Data...)
			from := len(buf)
			buf = streams.AppendEventTail(buf, e.Topic, buf[d:from])
			keys = append(keys, o.cfg.Keys.Topic(l.p, e.Topic), o.cfg.Keys.Live(l.p, e.Topic), o.cfg.Keys.Acked(l.p, e.Topic))
			if e.Deadline == 0 {
				args = append(args, "h", m.ID, e.Data, nil)
				spans = append(spans, span{len(args) - 1, from, len(buf)})
				continue
			}
			due := int64(streams.MustParseID(e.ID).Ms) + e.Deadline
			args = append(args, "H", m.ID, e.Data, nil, due, " "+strconv.FormatInt(e.Deadline, 10)+" "+e.Topic+" "+e.Data)
			spans = append(spans, span{len(args) - 3, from, len(buf)})
			if nextDue <= 0 || due < nextDue {
				nextDue = due
			}
		}
	}
	for _, sp := range spans {
		args[sp.arg] = buf[sp.from:sp.to]
	}
	l.scratch = buf
	counts, err := applyScript.Run(ctx, o.cfg.Redis, keys, args...).Int64Slice()
	if err != nil {
		return err
	}
	added, refused := uint64(counts[0]), uint64(counts[1])
	if refused > 0 {
		o.cfg.Logger.Warn("events dead-lettered: a key they go to holds another type", "partition", l.p, "events", refused, "dead", o.cfg.Keys.Dead(l.p))
		dead += refused
	}
	l.nextDue = nextDue
	if o.cfg.ApplyTime != nil {
		o.cfg.ApplyTime(time.Since(start))
	}
	o.stats.delivered.Add(added)
	o.stats.deadLettered.Add(dead)
	o.stats.forwarded.Add(forwarded)
	if id, err := streams.ParseID(msgs[len(msgs)-1].ID); err == nil {
		if m := &o.applied[l.p]; m.epoch != l.epoch || m.id.Less(id) {
			*m = mark{epoch: l.epoch, id: id}
		}
	}
	return nil
}

// forward moves a misrouted entry to its partition's ingress. On a single
// Redis the move is fenced atomically; on Redis Cluster the two streams are
// in different slots, so the lease is checked just before the XADD and a
// node paused between the two could forward an entry twice (it arrives as
// a second entry with its own ID: forwarding is at least once).
func (o *Owner) forward(ctx context.Context, l *lease, e streams.Entry) error {
	to := streams.Partition(e.Topic, o.cfg.Partitions)
	origin := strconv.Itoa(l.p) + "/" + e.ID
	var err error
	if _, cluster := o.cfg.Redis.(*redis.ClusterClient); cluster {
		err = o.checkLease(ctx, l)
		if err == nil {
			values := []any{"topic", e.Topic, "data", e.Data, "forwarded_from", origin}
			if e.Deadline > 0 {
				values = append(values, "deadline", e.Deadline)
			}
			err = o.cfg.Redis.XAdd(ctx, &redis.XAddArgs{Stream: o.cfg.Keys.Ingress(to), Values: values}).Err()
		}
	} else {
		deadline := ""
		if e.Deadline > 0 {
			deadline = strconv.FormatInt(e.Deadline, 10)
		}
		keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(to)}
		err = forwardScript.Run(ctx, o.cfg.Redis, keys, l.value, e.Topic, e.Data, origin, deadline).Err()
	}
	if err != nil && classify(err) != kindLeaseLost {
		return fmt.Errorf("forwarding %s from partition %d to %d: %w", e.ID, l.p, to, err)
	}
	return err
}

// checkLease fails with a lease-lost error when l is no longer held.
func (o *Owner) checkLease(ctx context.Context, l *lease) error {
	v, err := o.cfg.Redis.Get(ctx, o.cfg.Keys.Owner(l.p)).Result()
	if classify(err) == kindNil || err == nil && v != l.value {
		return ErrLeaseLost // no owner, or another
	}
	return err
}

// trim drops ingress entries older than the retention, never a pending one.
func (o *Owner) trim(ctx context.Context, l *lease) error {
	minID := strconv.FormatInt(time.Now().Add(-o.cfg.Retention).UnixMilli(), 10) + "-0"
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Ingress(l.p)}
	return trimScript.Run(ctx, o.cfg.Redis, keys, l.value, streams.Group, minID).Err()
}
