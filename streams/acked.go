package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Acked is a subject's acknowledged cursor on a topic (bus/ack.go moves
// it; Keys.Acked says where it is kept) and how many events follow it.
type Acked struct {
	// ID is the newest event the subject acknowledged; zero when it never
	// acknowledged one (or its cursor expired with the topic's history).
	ID ID
	// Seq is the seq of ID as stored with the cursor; 0 when unknown.
	Seq uint64
	// Unread is how many events of the topic follow ID, exactly, trimmed
	// ones included: the head's seq minus the cursor's when the cursor is
	// of this life of the topic's sequence (see History), every event of
	// it when the cursor is older or zero, and counted when the numbers do
	// not add up (events written before wsbus numbered them, or Redis
	// having lost writes).
	Unread uint64
}

// ackedField is the field of a subject's cursor in the Acked hash.
func ackedField(subject string) string { return "s:" + subject }

// ackedCmds queues, in pipe, the read of each subject's cursor on the
// history stream of partition p at key.
func (h *History) ackedCmds(ctx context.Context, pipe redis.Pipeliner, p int, topic string, subjects []string) []*redis.StringCmd {
	if len(subjects) == 0 {
		return nil
	}
	cmds := make([]*redis.StringCmd, len(subjects))
	for i, s := range subjects {
		cmds[i] = pipe.HGet(ctx, h.keys.Acked(p, topic), ackedField(s))
	}
	return cmds
}

// readAcked reads the answers of ackedCmds against the stream's info (nil
// when the stream does not exist), counting in Redis where it must.
func (h *History) readAcked(ctx context.Context, key string, subjects []string, cmds []*redis.StringCmd, info *redis.XInfoStream) (map[string]Acked, error) {
	if len(subjects) == 0 {
		return nil, nil
	}
	out := make(map[string]Acked, len(subjects))
	for i, s := range subjects {
		v, err := cmds[i].Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("reading acknowledged cursor: %w", err)
		}
		a, count := unread(v, info)
		if count {
			msgs, err := h.rdb.XRange(ctx, key, "("+a.ID.String(), "+").Result()
			if err != nil {
				return nil, fmt.Errorf("counting unread events: %w", err)
			}
			a.Unread = uint64(len(msgs))
		}
		out[s] = a
	}
	return out, nil
}

// unread works out a cursor stored as v ("<id> <seq>", "" for none) on a
// stream described by info (nil when it does not exist); count is true
// when the events after the cursor must be counted instead.
func unread(v string, info *redis.XInfoStream) (a Acked, count bool) {
	idText, seqText, _ := strings.Cut(v, " ")
	id, err := ParseID(idText)
	if v == "" || err != nil {
		id, seqText = ID{}, ""
	}
	a.ID = id
	if s, err := strconv.ParseUint(seqText, 10, 64); err == nil {
		a.Seq = s
	}
	if info == nil {
		return a, false
	}
	head, hseq := MustParseID(info.LastGeneratedID), headSeq(info)
	if !id.Less(head) {
		return a, false // nothing after the cursor
	}
	if id.IsZero() || id.Less(MustParseID(info.MaxDeletedEntryID)) {
		// Never acknowledged, or a cursor older than this life of the
		// sequence: every event of it follows.
		if hseq == 0 {
			return a, true
		}
		a.Unread = hseq
		return a, false
	}
	seq, err := strconv.ParseUint(seqText, 10, 64)
	a.Seq = seq
	if err != nil || seq == 0 || seq > hseq {
		return a, true
	}
	a.Unread = hseq - seq
	return a, false
}

// Acked returns subject's acknowledged cursor on topic.
func (h *History) Acked(ctx context.Context, topic, subject string) (Acked, error) {
	p := Partition(topic, h.n)
	key := h.keys.Topic(p, topic)
	subjects := []string{subject}
	pipe := h.rdb.TxPipeline()
	cmds := h.ackedCmds(ctx, pipe, p, topic, subjects)
	infoCmd := pipe.XInfoStream(ctx, key)
	_, _ = pipe.Exec(ctx) // each command's error is read below
	info, err := infoCmd.Result()
	if isNoSuchKey(err) {
		info, err = nil, nil
	}
	if err != nil {
		return Acked{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	got, err := h.readAcked(ctx, key, subjects, cmds, info)
	return got[subject], err
}
