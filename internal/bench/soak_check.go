package bench

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/wsbus/wsbus/streams"
)

// The soak's check, stated once here (soak_worker.go keeps the spans,
// soak.go publishes and verifies):
//
// The soak publishes to topics of its own on a fresh bus, so topic t's
// n-th event is the n-th XADD the soak made for t, with {"n":n} in its
// data, and the gateway must give it seq n. Every subscription a client
// holds is a Span: it begins at the cursor of its "subscribed" (the head
// of a fresh subscription: From, and the ID of event From) and is kept
// across every reconnect that resumes it with its cursor. Each event of
// the span's topic must be the next: n = Last+1 and an ID above the last
// one. An event at or below the cursor is a duplicate and is not taken; an
// n past Last+1 is taken and the hole counted lost; a seq other than n is
// counted bad. At the end the publisher, which kept every ID it was given,
// proves each span's start and events were exactly what it published
// (sums of ID hashes over the span's range), and that every span still
// subscribed reached its topic's last event. A span that was unsubscribed
// may end anywhere: events after the unsubscribe are not due.

// Span is one subscription of one soak connection to one topic, as the
// client checked it. JSON names are short: a run reports tens of
// thousands of spans.
type Span struct {
	Topic int    `json:"t"`           // index of the topic (soakTopic)
	From  uint64 `json:"f"`           // the seq of the cursor it began at: events From+1, From+2, ... are due
	Start uint64 `json:"s"`           // idHash of that cursor's ID ("0" when the topic had no event)
	Last  uint64 `json:"l"`           // the n of the last event taken
	Count uint64 `json:"c"`           // events taken: each new and after the one before
	Sum   uint64 `json:"h"`           // the sum of idHash over the IDs taken
	Lost  uint64 `json:"g,omitempty"` // events skipped over: holes between events taken
	Dups  uint64 `json:"d,omitempty"` // events at or below the cursor: received again, or out of order
	Bad   uint64 `json:"b,omitempty"` // events taken whose seq is not their n
	Open  bool   `json:"o,omitempty"` // still subscribed at the end: every event of the topic is due

	lastID streams.ID
}

// newSpan begins a span at a subscription's cursor: head is the ID of
// event seq of topic ("0" when there is none).
func newSpan(topic int, head string, seq uint64) (*Span, error) {
	id, err := streams.ParseID(head)
	if err != nil {
		return nil, fmt.Errorf("bench: subscribed with head %q: %w", head, err)
	}
	return &Span{Topic: topic, From: seq, Start: idHash(head), Last: seq, lastID: id, Open: true}, nil
}

// verdict is what take found wrong with one event: nothing (0), or a
// set of these.
type verdict uint8

const (
	duplicate verdict = 1 << iota // at or below the cursor: not taken
	hole                          // taken, after a hole: events were lost
	badSeq                        // taken, but its seq is not its n
)

// take checks one event of the span's topic: its ID, the seq the gateway
// gave it and the n the publisher put in its data.
func (s *Span) take(id string, parsed streams.ID, seq, n uint64) verdict {
	if n <= s.Last || !s.lastID.Less(parsed) {
		s.Dups++
		return duplicate
	}
	var v verdict
	if n > s.Last+1 {
		s.Lost += n - s.Last - 1
		v |= hole
	}
	if seq != n {
		s.Bad++
		v |= badSeq
	}
	s.Last, s.lastID = n, parsed
	s.Count++
	s.Sum += idHash(id)
	return v
}

// idHash is FNV-1a of a stream ID, mixed (splitmix64's finalizer) so that
// sums over ranges of close IDs do not collide by carries: the worker and
// the publisher, in different processes, must agree on it.
func idHash(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// SoakCheck is the verdict on every span of a soak run against what was
// published.
type SoakCheck struct {
	Spans     int    `json:"spans"`
	Open      int    `json:"open"`      // spans still subscribed at the end
	Delivered uint64 `json:"delivered"` // events taken over all spans
	Due       uint64 `json:"due"`       // events the spans had to take: Delivered if nothing is wrong
	Lost      uint64 `json:"lost"`      // holes, and what open spans never reached
	Dups      uint64 `json:"duplicated"`
	Bad       uint64 `json:"bad_seq"`
	// Mismatched spans began at an ID other than the published event From,
	// or took IDs other than those published as From+1..Last.
	Mismatched int `json:"mismatched"`
	// Unknown spans took events past what was published for their topic.
	Unknown  int      `json:"unknown"`
	Problems []string `json:"problems,omitempty"` // the first few, for the report
}

// maxProblems bounds the examples a check or a worker keeps.
const maxProblems = 20

// checkSpans verifies spans against published: published[t] holds topic
// t's IDs in publish order (its n-th event at n-1).
func checkSpans(spans []Span, published [][]string) SoakCheck {
	prefix := make([][]uint64, len(published)) // prefix[t][k]: the sum of idHash of the first k IDs
	for t, ids := range published {
		p := make([]uint64, len(ids)+1)
		for i, id := range ids {
			p[i+1] = p[i] + idHash(id)
		}
		prefix[t] = p
	}
	var c SoakCheck
	problem := func(format string, args ...any) {
		if len(c.Problems) < maxProblems {
			c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
		}
	}
	for _, s := range spans {
		c.Spans++
		c.Delivered += s.Count
		c.Lost += s.Lost
		c.Dups += s.Dups
		c.Bad += s.Bad
		if s.Lost > 0 || s.Dups > 0 || s.Bad > 0 {
			problem("%s from seq %d: %d lost, %d duplicated, %d with a wrong seq, last %d", soakTopic(s.Topic), s.From, s.Lost, s.Dups, s.Bad, s.Last)
		}
		if s.Topic < 0 || s.Topic >= len(published) {
			c.Unknown++
			problem("a span of topic index %d, which the soak never published to", s.Topic)
			continue
		}
		ids, p := published[s.Topic], prefix[s.Topic]
		if s.From > uint64(len(ids)) || s.Last > uint64(len(ids)) {
			c.Unknown++
			problem("%s from seq %d to %d: only %d events were published", soakTopic(s.Topic), s.From, s.Last, len(ids))
			continue
		}
		start := "0"
		if s.From > 0 {
			start = ids[s.From-1]
		}
		switch {
		case s.Start != idHash(start):
			c.Mismatched++
			problem("%s: a span began at seq %d with a head other than that event, %s", soakTopic(s.Topic), s.From, start)
		case s.Count == s.Last-s.From && s.Sum != p[s.Last]-p[s.From]:
			c.Mismatched++
			problem("%s: events %d..%d had IDs other than those published", soakTopic(s.Topic), s.From+1, s.Last)
		}
		c.Due += s.Last - s.From
		if s.Open {
			c.Open++
			if tail := uint64(len(ids)) - s.Last; tail > 0 {
				c.Lost += tail
				c.Due += tail
				problem("%s: a subscription from seq %d stopped at %d of %d events", soakTopic(s.Topic), s.From, s.Last, len(ids))
			}
		}
	}
	return c
}

// Failed reports whether the check found anything wrong.
func (c SoakCheck) Failed() bool {
	return c.Lost > 0 || c.Dups > 0 || c.Bad > 0 || c.Mismatched > 0 || c.Unknown > 0
}

// soakTopicPrefix names the soak's topics: soak:0, soak:1, ...
const soakTopicPrefix = "soak:"

func soakTopic(i int) string { return soakTopicPrefix + strconv.Itoa(i) }

// soakEvent is an event as the soak client reads it.
type soakEvent struct {
	topic int
	id    string
	seq   uint64
	t     int64  // unix nanoseconds at XADD
	n     uint64 // its number in its topic, as published
}

// soakEventHead and the rest are the shape of the gateway's event message
// (streams.AppendEvent) with the soak's data, {"t":...,"n":...}.
var (
	soakEventHead  = []byte(`{"type":"event","id":"`)
	soakEventSeq   = []byte(`","seq":`)
	soakEventTopic = []byte(`,"topic":"` + soakTopicPrefix)
	soakEventData  = []byte(`","data":{"t":`)
	soakEventN     = []byte(`,"n":`)
	soakEventTail  = []byte(`}}`)
)

// parseSoakEvent reads an event of a soak topic without a JSON decoder
// (the client must stay cheap beside the gateway it measures); ok is false
// for anything else. Its input comes from the server under test: it is
// fuzzed.
func parseSoakEvent(b []byte) (e soakEvent, ok bool) {
	var err error
	var field []byte
	if b, ok = bytes.CutPrefix(b, soakEventHead); !ok {
		return e, false
	}
	if field, b, ok = bytes.Cut(b, soakEventSeq); !ok {
		return e, false
	}
	if _, err = streams.ParseID(string(field)); err != nil {
		return e, false
	}
	e.id = string(field)
	if field, b, ok = bytes.Cut(b, soakEventTopic); !ok {
		return e, false
	}
	if e.seq, err = strconv.ParseUint(string(field), 10, 64); err != nil {
		return e, false
	}
	if field, b, ok = bytes.Cut(b, soakEventData); !ok {
		return e, false
	}
	if e.topic, err = strconv.Atoi(string(field)); err != nil || e.topic < 0 {
		return e, false
	}
	if field, b, ok = bytes.Cut(b, soakEventN); !ok {
		return e, false
	}
	if e.t, err = strconv.ParseInt(string(field), 10, 64); err != nil {
		return e, false
	}
	if field, ok = bytes.CutSuffix(b, soakEventTail); !ok {
		return e, false
	}
	if e.n, err = strconv.ParseUint(string(field), 10, 64); err != nil {
		return e, false
	}
	return e, true
}

// soakData is the payload of the soak's n-th event of a topic.
func soakData(t int64, n uint64) []byte {
	b := append([]byte(`{"t":`), strconv.FormatInt(t, 10)...)
	b = append(b, `,"n":`...)
	b = strconv.AppendUint(b, n, 10)
	return append(b, '}')
}
