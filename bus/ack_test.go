package bus

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/wsbus/wsbus/streams"
)

// TestAckerGathersAndBounds: acks gather per subject and topic, each
// distinct ID of a connection kept (a higher one may be refused, and a
// lower valid one must still count), and a connection's IDs in the batch
// being gathered are bounded by MaxAcks: past it a higher ID on a topic
// it has replaces its lowest there, and only another topic is refused.
func TestAckerGathersAndBounds(t *testing.T) {
	g := &Gateway{cfg: GatewayConfig{MaxAcks: 3, Partitions: 4}}
	a := newAcker(g)
	ann := "ann"
	phone, laptop := &client{subjectp: &ann}, &client{subjectp: &ann}
	id := func(ms uint64) streams.ID { return streams.ID{Ms: ms} }
	for _, step := range []struct {
		name  string
		cl    *client
		topic string
		id    streams.ID
		ok    bool
	}{
		{"first", phone, "a", id(5), true},
		{"higher on the same topic", phone, "a", id(9), true},
		{"the same ID again needs no room", phone, "a", id(5), true},
		{"another topic", phone, "b", id(1), true},
		{"past the bound on another topic", phone, "c", id(1), false},
		{"past the bound on a topic it has: replaces its lowest there", phone, "b", id(2), true},
		{"past the bound, higher again", phone, "a", id(12), true},
		{"past the bound, below all it has on the topic", phone, "a", id(3), true},
		{"another connection has its own bound", laptop, "a", id(8), true},
	} {
		if got := a.add(step.cl, step.topic, step.id); got != step.ok {
			t.Fatalf("%s: add = %v, want %v", step.name, got, step.ok)
		}
	}
	if n := a.waiting[phone]; n != 3 {
		t.Fatalf("phone has %d acks waiting, want 3", n)
	}
	calls := a.calls(a.take())
	if len(calls) != 2 {
		t.Fatalf("%d script calls, want one per topic (2)", len(calls))
	}
	if len(a.waiting) != 0 || !a.add(phone, "c", id(1)) {
		t.Fatalf("the next batch has acks waiting already: %v", a.waiting)
	}
	want := map[string][]any{
		"a": {"ann", 3, "12-0", "9-0", "8-0"}, // 5 replaced by 12; 3 below both
		"b": {"ann", 1, "2-0"},
	}
	for _, call := range calls {
		if !slices.Equal(call.args, want[call.topic]) {
			t.Fatalf("args of topic %s = %v, want %v", call.topic, call.args, want[call.topic])
		}
		if call.topic == "a" && (call.cands[0].cl != phone || call.cands[1].cl != phone || call.cands[2].cl != laptop) {
			t.Fatal("candidates are not in the order of their IDs")
		}
	}
}

// BenchmarkAckerAdd times what an ack costs its connection once the
// message is decoded: under the acker's lock, a look at the connection's
// acks of the topic in the batch, no Redis. A batch is taken every perBatch
// acks, as the flush every AckFlush does: one ack a batch for a reader
// that keeps up, a thousand for a catch-up acked event by event (past
// MaxAcks, each replaces the lowest of 256).
func BenchmarkAckerAdd(b *testing.B) {
	for _, perBatch := range []int{1, 1000} {
		b.Run(fmt.Sprintf("per-batch=%d", perBatch), func(b *testing.B) {
			b.ReportAllocs()
			a := newAcker(&Gateway{cfg: GatewayConfig{MaxAcks: 256, Partitions: 64}})
			sub := "user-42"
			cl := &client{subjectp: &sub}
			var n uint64
			for b.Loop() {
				n++
				a.add(cl, "user:42", streams.ID{Ms: n})
				if n%uint64(perBatch) == 0 {
					clear(a.pending) // what take does, without its new map
					clear(a.waiting)
				}
			}
		})
	}
}

// TestCursorsExpireWithHistory: an ack gives the topic's cursors the
// history's expiry, and each batch the owner applies to the topic extends
// both alike, so a cursor never outlives the sequence it points into.
func TestCursorsExpireWithHistory(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 2)
	msgs, _ := o.readNew(ctx, 0, "0", o.cfg.Block)
	if err := o.apply(ctx, l, msgs[:1], "0-0"); err != nil {
		t.Fatal(err)
	}
	hist, acked := keys.Topic(0, "t"), keys.Acked(0, "t")
	if _, err := ackScript.Run(ctx, rdb, []string{hist, acked}, "ann", 1, ids[0]).Result(); err != nil {
		t.Fatal(err)
	}
	same := func(when string) {
		t.Helper()
		h, a := rdb.PExpireTime(ctx, hist).Val(), rdb.PExpireTime(ctx, acked).Val()
		if h <= 0 || h != a {
			t.Fatalf("%s: history expires at %v, cursors at %v; want the same time", when, h, a)
		}
	}
	same("after the ack")
	// The clock moves on, so that a batch refreshing only one of the two
	// expiries would leave them apart: the passing time is under test.
	time.Sleep(5 * time.Millisecond)
	if err := o.apply(ctx, l, msgs[1:], msgs[0].ID); err != nil {
		t.Fatal(err)
	}
	same("after the next batch")
	if v := rdb.HGet(ctx, acked, "s:ann").Val(); v != ids[0]+" 1" {
		t.Fatalf("ann's cursor is stored as %q, want %q", v, ids[0]+" 1")
	}
}

// TestClientSize: the Gateway's state of a connection, with its first
// subscription inside, stays in the 128-byte size class, and each further
// subscription in the 64-byte one: every idle connection pays for them
// (docs/BENCHMARKS.md, idle cost).
func TestClientSize(t *testing.T) {
	if n := unsafe.Sizeof(client{}); n > 128 {
		t.Fatalf("client is %d bytes: past the 128-byte size class", n)
	}
	// A connection's second topic and on allocate one each.
	if n := unsafe.Sizeof(subscription{}); n > 64 {
		t.Fatalf("subscription is %d bytes: past the 64-byte size class", n)
	}
}
