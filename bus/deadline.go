package bus

// Deadlines. An ingress entry with a deadline is an event some subject
// must acknowledge within that many milliseconds of the time in its ID.
// The owner's apply script, in the same fenced step that adds the event
// to history (so once, whatever replays), adds it to the partition's
// sorted set Keys.Deadlines, scored by when it is due, the member holding
// all an escalation needs: "<id> <seq> <deadline> <topic> <data>" (the
// data too: history may be trimmed before the deadline).
//
// When an event is due, the owner escalates it unless the topic's highest
// acknowledged ID (field "max" of Keys.Acked, see ack.go) is at or past
// it, and the event leaves the set either way:
//
//   - On a single Redis, escalateScript does both atomically, fenced by
//     the lease: an event is escalated once, and an acknowledged one never.
//   - On Redis Cluster the escalations stream is in another slot, so it
//     takes three steps: unackedScript (partition slot, fenced) drops the
//     acknowledged ones and returns the rest; the lease is checked and
//     escalateOnceScript (escalations slot) appends each one not already
//     in Keys.EscalationsSent, the dedupe of the last day; dueDoneScript
//     (partition slot, fenced) removes them from the set. An owner that
//     dies between the steps leaves the events in the set and the next
//     one repeats the steps, which the dedupe makes add nothing twice.
//     The window left: an ack written between the first and second steps
//     (one round trip) does not stop that escalation, and a node that
//     lost its lease between the check and the second step can escalate
//     once (never twice) what the new owner would have found acknowledged.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// escalationsLen is about how many entries <prefix>:escalations keeps:
// readers use a consumer group and keep up; the cap only bounds a stream
// nobody reads.
const escalationsLen = 100000

// dueMember is a member of the deadlines set, split.
type dueMember struct {
	raw                      string
	id, seq, deadline, topic string
	data                     string
}

func parseDue(m string) (dueMember, bool) {
	parts := strings.SplitN(m, " ", 5)
	if len(parts) != 5 {
		return dueMember{}, false
	}
	return dueMember{raw: m, id: parts[0], seq: parts[1], deadline: parts[2], topic: parts[3], data: parts[4]}, true
}

// escalateDue escalates the events of l's partition that are due now, a
// batch at a time, and sets l.nextDue to when the next one is.
func (o *Owner) escalateDue(ctx context.Context, l *lease) error {
	_, cluster := o.cfg.Redis.(*redis.ClusterClient)
	return o.escalateDueWith(ctx, l, cluster)
}

// escalateDueSteps is escalateDue as on Redis Cluster, in three steps.
func (o *Owner) escalateDueSteps(ctx context.Context, l *lease) error {
	return o.escalateDueWith(ctx, l, true)
}

func (o *Owner) escalateDueWith(ctx context.Context, l *lease, steps bool) error {
	key := o.cfg.Keys.Deadlines(l.p)
	for {
		now := time.Now().UnixMilli()
		raw, err := o.cfg.Redis.ZRangeByScore(ctx, key, &redis.ZRangeBy{
			Min: "-inf", Max: strconv.FormatInt(now, 10), Count: int64(o.cfg.Batch),
		}).Result()
		if err != nil {
			return fmt.Errorf("reading deadlines of partition %d: %w", l.p, err)
		}
		if len(raw) == 0 {
			return o.readNextDue(ctx, l)
		}
		var members []dueMember
		for _, m := range raw {
			if d, ok := parseDue(m); ok {
				members = append(members, d)
			} else {
				members = append(members, dueMember{raw: m}) // dropped by the script
			}
		}
		var n int64
		if steps {
			n, l.nextDue, err = o.escalateSteps(ctx, l, members)
		} else {
			n, l.nextDue, err = o.escalateAtomic(ctx, l, members)
		}
		o.stats.escalations.Add(uint64(n))
		if err != nil {
			return err
		}
		if len(raw) < o.cfg.Batch {
			return nil
		}
	}
}

// readNextDue sets l.nextDue to the score of the first member of the
// deadlines set, or -1 when it is empty.
func (o *Owner) readNextDue(ctx context.Context, l *lease) error {
	first, err := o.cfg.Redis.ZRangeWithScores(ctx, o.cfg.Keys.Deadlines(l.p), 0, 0).Result()
	if err != nil {
		return fmt.Errorf("reading deadlines of partition %d: %w", l.p, err)
	}
	l.nextDue = -1
	if len(first) > 0 {
		l.nextDue = int64(first[0].Score)
	}
	return nil
}

// ackedKey is the acked hash of m's topic; a member that did not parse
// gets the partition's owner key (any key of the slot), which the scripts
// do not read: they drop the member.
func (o *Owner) ackedKey(l *lease, m dueMember) string {
	if m.topic == "" {
		return o.cfg.Keys.Owner(l.p)
	}
	return o.cfg.Keys.Acked(l.p, m.topic)
}

func (o *Owner) escalateAtomic(ctx context.Context, l *lease, members []dueMember) (n, next int64, err error) {
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Deadlines(l.p), o.cfg.Keys.Escalations()}
	args := []any{l.value, escalationsLen}
	for _, m := range members {
		keys = append(keys, o.ackedKey(l, m))
		args = append(args, m.raw)
	}
	res, err := escalateScript.Run(ctx, o.cfg.Redis, keys, args...).Int64Slice()
	if err != nil || len(res) != 2 {
		return 0, 0, fencedErr(err, "escalating deadlines of partition %d: %v", l.p, res)
	}
	return res[0], res[1], nil
}

// escalateSteps escalates members in the three steps of Redis Cluster
// (see the top of this file).
func (o *Owner) escalateSteps(ctx context.Context, l *lease, members []dueMember) (n, next int64, err error) {
	unacked, n, err := o.escalateOnce(ctx, l, members)
	if err != nil {
		return 0, 0, err
	}
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Deadlines(l.p)}
	args := []any{l.value}
	for _, raw := range unacked {
		args = append(args, raw)
	}
	next, err = dueDoneScript.Run(ctx, o.cfg.Redis, keys, args...).Int64()
	if err != nil {
		return n, 0, fencedErr(err, "escalating deadlines of partition %d", l.p)
	}
	return n, next, nil
}

// escalateOnce runs the first two steps: it returns the members no subject
// acknowledged, escalated (n of them now, the others before).
func (o *Owner) escalateOnce(ctx context.Context, l *lease, members []dueMember) (unacked []string, n int64, err error) {
	keys := []string{o.cfg.Keys.Owner(l.p), o.cfg.Keys.Deadlines(l.p)}
	args := []any{l.value}
	for _, m := range members {
		keys = append(keys, o.ackedKey(l, m))
		args = append(args, m.raw)
	}
	unacked, err = unackedScript.Run(ctx, o.cfg.Redis, keys, args...).StringSlice()
	if err != nil {
		return nil, 0, fencedErr(err, "checking deadlines of partition %d", l.p)
	}
	if len(unacked) == 0 {
		return nil, 0, nil
	}
	if err := o.checkLease(ctx, l); err != nil {
		return nil, 0, err
	}
	eargs := []any{escalationsLen, time.Now().UnixMilli()}
	for _, raw := range unacked {
		m, _ := parseDue(raw)
		eargs = append(eargs, strconv.Itoa(l.p)+"/"+m.id, m.topic, m.id, m.seq, m.data, m.deadline)
	}
	ekeys := []string{o.cfg.Keys.Escalations(), o.cfg.Keys.EscalationsSent()}
	if n, err = escalateOnceScript.Run(ctx, o.cfg.Redis, ekeys, eargs...).Int64(); err != nil {
		return nil, 0, fmt.Errorf("escalating deadlines of partition %d: %w", l.p, err)
	}
	return unacked, n, nil
}

// fencedErr is ErrLeaseLost for a fenced script's refusal, else err
// wrapped with what was being done.
func fencedErr(err error, format string, args ...any) error {
	if classify(err) == kindLeaseLost {
		return ErrLeaseLost
	}
	if err == nil {
		return fmt.Errorf("bus: "+format, args...)
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
