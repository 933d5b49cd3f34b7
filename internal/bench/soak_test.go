package bench

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/streams"
)

// ev is an event as a test feeds it to a span: its ID, the seq the
// gateway gave it and the n the publisher put in it.
type ev struct {
	id     string
	seq, n uint64
}

// seqOf is events with IDs 100-n, seq n and n n for each n.
func seqOf(ns ...uint64) []ev {
	out := make([]ev, len(ns))
	for i, n := range ns {
		out[i] = ev{fmt.Sprintf("100-%d", n), n, n}
	}
	return out
}

// TestSpanTake feeds spans crafted sequences: every event once and in
// order is clean; a repeat, an event out of order, a hole, a wrong seq and
// an ID that goes back are each counted as what they are.
func TestSpanTake(t *testing.T) {
	for _, tc := range []struct {
		name      string
		head      string
		headSeq   uint64
		events    []ev
		verdicts  []verdict
		last      uint64
		count     uint64
		lost      uint64
		dups, bad uint64
	}{
		{name: "in order from an empty topic", head: "0", events: seqOf(1, 2, 3), verdicts: []verdict{0, 0, 0}, last: 3, count: 3},
		{name: "in order from a head", head: "100-5", headSeq: 5, events: seqOf(6, 7), verdicts: []verdict{0, 0}, last: 7, count: 2},
		{name: "the head again", head: "100-5", headSeq: 5, events: seqOf(5, 6), verdicts: []verdict{duplicate, 0}, last: 6, count: 1, dups: 1},
		{name: "a repeat", head: "0", events: seqOf(1, 2, 2, 3), verdicts: []verdict{0, 0, duplicate, 0}, last: 3, count: 3, dups: 1},
		{name: "a hole", head: "0", events: seqOf(1, 2, 5, 6), verdicts: []verdict{0, 0, hole, 0}, last: 6, count: 4, lost: 2},
		{name: "out of order", head: "0", events: seqOf(1, 3, 2, 4), verdicts: []verdict{0, hole, duplicate, 0}, last: 4, count: 3, lost: 1, dups: 1},
		{name: "a hole at the start", head: "100-2", headSeq: 2, events: seqOf(4), verdicts: []verdict{hole}, last: 4, count: 1, lost: 1},
		{
			name: "a seq other than n", head: "0",
			events:   []ev{{"100-1", 1, 1}, {"100-2", 7, 2}, {"100-3", 3, 3}},
			verdicts: []verdict{0, badSeq, 0}, last: 3, count: 3, bad: 1,
		},
		{
			name: "a hole and a wrong seq at once", head: "0",
			events:   []ev{{"100-1", 1, 1}, {"100-4", 2, 4}},
			verdicts: []verdict{0, hole | badSeq}, last: 4, count: 2, lost: 2, bad: 1,
		},
		{
			name: "an ID that goes back", head: "0",
			events:   []ev{{"100-1", 1, 1}, {"99-0", 2, 2}, {"100-2", 2, 2}},
			verdicts: []verdict{0, duplicate, 0}, last: 2, count: 2, dups: 1,
		},
		{
			name: "the same ID with the next n", head: "0",
			events:   []ev{{"100-1", 1, 1}, {"100-1", 2, 2}},
			verdicts: []verdict{0, duplicate}, last: 1, count: 1, dups: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp, err := newSpan(3, tc.head, tc.headSeq)
			if err != nil {
				t.Fatal(err)
			}
			var sum uint64
			for i, e := range tc.events {
				v := sp.take(e.id, streams.MustParseID(e.id), e.seq, e.n)
				if v != tc.verdicts[i] {
					t.Errorf("event %d (%s, seq %d, n %d): verdict %b, want %b", i, e.id, e.seq, e.n, v, tc.verdicts[i])
				}
				if v&duplicate == 0 {
					sum += idHash(e.id)
				}
			}
			if sp.Last != tc.last || sp.Count != tc.count || sp.Lost != tc.lost || sp.Dups != tc.dups || sp.Bad != tc.bad {
				t.Errorf("span %+v: want last %d, count %d, lost %d, dups %d, bad %d", *sp, tc.last, tc.count, tc.lost, tc.dups, tc.bad)
			}
			if sp.Sum != sum || sp.From != tc.headSeq || sp.Start != idHash(tc.head) || !sp.Open {
				t.Errorf("span %+v: want the sum of the IDs taken, from %d, start at %s, open", *sp, tc.headSeq, tc.head)
			}
		})
	}
	if _, err := newSpan(0, "x", 0); err == nil {
		t.Error("newSpan with head x: no error")
	}
}

// TestCheckSpans verifies crafted spans against a crafted publish log.
func TestCheckSpans(t *testing.T) {
	published := [][]string{
		{"10-0", "11-0", "12-0", "13-0"},
		{"10-1", "20-0"},
	}
	// span takes topic's events n = from+1 .. to as published.
	span := func(topic int, from, to uint64, open bool) Span {
		head := "0"
		if from > 0 {
			head = published[topic][from-1]
		}
		sp, err := newSpan(topic, head, from)
		if err != nil {
			t.Fatal(err)
		}
		for n := from + 1; n <= to; n++ {
			id := published[topic][n-1]
			sp.take(id, streams.MustParseID(id), n, n)
		}
		sp.Open = open
		return *sp
	}
	for _, tc := range []struct {
		name  string
		spans []Span
		want  SoakCheck // Problems are checked for being there, not their text
	}{
		{
			name:  "whole and ended spans",
			spans: []Span{span(0, 0, 4, true), span(0, 2, 4, true), span(1, 0, 1, false), span(1, 1, 1, false)},
			want:  SoakCheck{Spans: 4, Open: 2, Delivered: 7, Due: 7},
		},
		{
			name:  "an open span that stopped short",
			spans: []Span{span(0, 1, 3, true)},
			want:  SoakCheck{Spans: 1, Open: 1, Delivered: 2, Due: 3, Lost: 1},
		},
		{
			name: "a hole",
			spans: func() []Span {
				sp := span(0, 0, 1, true)
				sp.take("12-0", streams.MustParseID("12-0"), 3, 3)
				sp.take("13-0", streams.MustParseID("13-0"), 4, 4)
				return []Span{sp}
			}(),
			want: SoakCheck{Spans: 1, Open: 1, Delivered: 3, Due: 4, Lost: 1},
		},
		{
			name: "a duplicate and a wrong seq",
			spans: func() []Span {
				sp := span(0, 0, 2, false)
				sp.take("11-0", streams.MustParseID("11-0"), 2, 2)
				sp.take("12-0", streams.MustParseID("12-0"), 9, 3)
				return []Span{sp}
			}(),
			want: SoakCheck{Spans: 1, Delivered: 3, Due: 3, Dups: 1, Bad: 1},
		},
		{
			name: "a head other than the event its seq names",
			spans: func() []Span {
				sp, _ := newSpan(0, "11-0", 1) // event 1 is 10-0
				return []Span{*sp}
			}(),
			want: SoakCheck{Spans: 1, Open: 1, Due: 3, Lost: 3, Mismatched: 1},
		},
		{
			name: "an ID other than published",
			spans: func() []Span {
				sp, _ := newSpan(1, "0", 0)
				sp.take("10-1", streams.MustParseID("10-1"), 1, 1)
				sp.take("19-0", streams.MustParseID("19-0"), 2, 2) // published as 20-0
				return []Span{*sp}
			}(),
			want: SoakCheck{Spans: 1, Open: 1, Delivered: 2, Due: 2, Mismatched: 1},
		},
		{
			name: "events past what was published, and a topic never published to",
			spans: func() []Span {
				sp := span(1, 0, 2, true)
				sp.take("30-0", streams.MustParseID("30-0"), 3, 3)
				other, _ := newSpan(5, "0", 0)
				return []Span{sp, *other}
			}(),
			want: SoakCheck{Spans: 2, Delivered: 3, Unknown: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkSpans(tc.spans, published)
			if got.Failed() != (len(got.Problems) > 0) {
				t.Errorf("Failed() %v with problems %q", got.Failed(), got.Problems)
			}
			if tc.want.Failed() != got.Failed() {
				t.Errorf("Failed() = %v, want %v", got.Failed(), tc.want.Failed())
			}
			got.Problems = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("checkSpans = %+v\n                   want %+v", got, tc.want)
			}
		})
	}
}

// TestParseSoakEvent reads the soak's events back as the gateway encodes
// them, and nothing else.
func TestParseSoakEvent(t *testing.T) {
	msg := streams.AppendEvent(nil, soakTopic(17), "1764150000123-4", 42, soakData(1764150000123456789, 41))
	e, ok := parseSoakEvent(msg)
	want := soakEvent{topic: 17, id: "1764150000123-4", seq: 42, t: 1764150000123456789, n: 41}
	if !ok || e != want {
		t.Fatalf("parseSoakEvent(%s) = %+v, %v; want %+v", msg, e, ok, want)
	}
	for _, other := range []string{
		`{"type":"subscribed","topic":"soak:1","recovered":true,"epoch":"e","head":"0","seq":0}`,
		string(streams.AppendEvent(nil, "bench:1", "1-1", 1, soakData(1, 1))),         // not a soak topic
		string(streams.AppendEvent(nil, "soak:x", "1-1", 1, soakData(1, 1))),          // not an index
		string(streams.AppendEvent(nil, soakTopic(1), "1-x", 1, soakData(1, 1))),      // not an ID
		string(streams.AppendEvent(nil, soakTopic(1), "1-1", 1, []byte(`{"t":1}`))),   // no n
		string(streams.AppendEvent(nil, soakTopic(1), "1-1", 1, []byte(`"text"`))),    // not the soak's data
		string(streams.AppendEvent(nil, soakTopic(1), "1-1", 1, soakData(1, 1)))[:60], // cut
	} {
		if e, ok := parseSoakEvent([]byte(other)); ok {
			t.Errorf("parseSoakEvent(%s) = %+v, want not a soak event", other, e)
		}
	}
}

// FuzzParseSoakEvent: the soak client reads whatever a gateway sends
// without panicking, and what it takes for a soak event says the same when
// encoded again.
func FuzzParseSoakEvent(f *testing.F) {
	f.Add(streams.AppendEvent(nil, soakTopic(3), "5-1", 7, soakData(99, 7)))
	f.Add([]byte(`{"type":"event","id":"5-1","seq":7,"topic":"soak:3","data":{"t":1,"n":}}`))
	f.Add([]byte(`{"type":"event","id":"","seq":,"topic":"soak:","data":{"t":,"n":}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, ok := parseSoakEvent(b)
		if !ok {
			return
		}
		again, ok := parseSoakEvent(streams.AppendEvent(nil, soakTopic(e.topic), e.id, e.seq, soakData(e.t, e.n)))
		if !ok || again != e {
			t.Fatalf("%q read as %+v, encoded again and read as %+v (%v)", b, e, again, ok)
		}
	})
}

func TestSoakTopicIndex(t *testing.T) {
	for topic, want := range map[string]int{"soak:0": 0, "soak:17": 17, "soak:999": 999} {
		if got, ok := soakTopicIndex(topic); !ok || got != want {
			t.Errorf("soakTopicIndex(%q) = %d, %v; want %d", topic, got, ok, want)
		}
	}
	for _, topic := range []string{"soak:", "soak:01", "soak:-1", "soak:1x", "bench:1", "soak:99999999999999999999"} {
		if got, ok := soakTopicIndex(topic); ok {
			t.Errorf("soakTopicIndex(%q) = %d, want not a soak topic", topic, got)
		}
	}
}

func TestCountClients(t *testing.T) {
	list := "id=3 addr=127.0.0.1:5001 laddr=127.0.0.1:6379 fd=8 name=soak-gw1 age=9 cmd=xread\n" +
		"id=4 addr=127.0.0.1:5002 laddr=127.0.0.1:6379 fd=9 name=soak-gw10 age=9 cmd=ping\n" +
		"id=5 addr=127.0.0.1:5003 laddr=127.0.0.1:6379 fd=10 name= age=1 cmd=client|list\n" +
		"id=6 addr=127.0.0.1:5004 laddr=127.0.0.1:6379 fd=11 name=soak-gw1 age=2 cmd=ssubscribe\n"
	for name, want := range map[string]int{"soak-gw1": 2, "soak-gw10": 1, "soak-gw2": 0, "": 1} {
		if got := countClients(list, name); got != want {
			t.Errorf("countClients(%q) = %d, want %d", name, got, want)
		}
	}
}

// soakFrames are server frames for a soak connection's tests.
func soakFrames(msgs ...[]byte) []byte {
	var b bytes.Buffer
	for _, m := range msgs {
		_ = ws.WriteFrame(&b, ws.NewTextFrame(m))
	}
	return b.Bytes()
}

// newSoakTestConn is a worker of soakTopics topics with one connection on
// soak:topic, subscribed at head (seq) as its dial would leave it; it has
// no socket.
func newSoakTestConn(t testing.TB, topic int, head string, seq uint64) (*worker, *wconn) {
	t.Helper()
	s, err := newSoakWorker(&SoakJob{Topics: 10})
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{soak: s, job: Job{URL: "ws://test"}}
	w.in = &inbox{w: w}
	wc := &wconn{fd: -1, topic: soakTopic(topic), shard: &w.shards[0], soak: &soakConn{topic: topic}}
	w.conns = []*wconn{wc}
	m := &wsbus.Message{Type: "subscribed", Topic: soakTopic(topic), Recovered: true, Epoch: "e", Head: head, Seq: seq}
	_ = wc.cursor.Subscribed(m)
	w.soakSubscribed(wc, m, true)
	return w, wc
}

func soakEventMsg(topic int, id string, n uint64) []byte {
	return streams.AppendEvent(nil, soakTopic(topic), id, n, soakData(1, n))
}

// TestSoakRecord drives a soak connection's messages through the inbox's
// reader, cut in two at every offset: the span takes its events, a repeat
// and an event of another topic are counted, an unsubscribed ends the
// span being left, and an error on the topic held marks the connection to
// be dialed again.
func TestSoakRecord(t *testing.T) {
	wire := soakFrames(
		soakEventMsg(2, "100-6", 6),
		soakEventMsg(2, "100-6", 6),                        // again
		soakEventMsg(4, "100-1", 1),                        // a topic not held
		[]byte(`{"type":"unsubscribed","topic":"soak:2"}`), // not being left
		soakEventMsg(2, "100-7", 7),
		[]byte(`{"type":"pong"}`),
	)
	for cut := 0; cut <= len(wire); cut++ {
		w, wc := newSoakTestConn(t, 2, "100-5", 5)
		b := bytes.Clone(wire)
		for _, part := range [][]byte{b[:cut], b[cut:]} {
			if err := w.in.consume(wc, part, 2); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
		}
		sp := wc.soak.span
		if sp.Last != 7 || sp.Count != 2 || sp.Dups != 1 || sp.Lost != 0 {
			t.Fatalf("cut %d: span %+v, want events 6 and 7, one repeat", cut, *sp)
		}
		if w.soak.dups.Load() != 1 || w.soak.unexpected.Load() != 2 || wc.cursor.ID != "100-7" || wc.cursor.Seq != 7 {
			t.Fatalf("cut %d: %d dups, %d unexpected, cursor %+v", cut, w.soak.dups.Load(), w.soak.unexpected.Load(), wc.cursor)
		}
		if len(w.soakNotes()) != 3 {
			t.Fatalf("cut %d: notes %q, want one for each problem", cut, w.soakNotes())
		}
	}

	t.Run("switch", func(t *testing.T) {
		w, wc := newSoakTestConn(t, 2, "0", 0)
		// As switchTopic leaves it once its frames are written.
		sc := wc.soak
		sc.leaving, sc.span, sc.pending, sc.topic = sc.span, nil, true, 3
		sc.leaving.Open = false
		wc.topic, wc.cursor = soakTopic(3), wsbus.Cursor{}
		in := soakFrames(
			soakEventMsg(2, "100-1", 1), // still due until unsubscribed
			[]byte(`{"type":"unsubscribed","topic":"soak:2"}`),
			[]byte(`{"type":"subscribed","topic":"soak:3","recovered":true,"epoch":"e","head":"90-0","seq":4}`),
			soakEventMsg(3, "100-5", 5),
			soakEventMsg(2, "100-2", 2), // after unsubscribed
		)
		if err := w.in.consume(wc, in, 2); err != nil {
			t.Fatal(err)
		}
		spans := w.soakSpans()
		want := []Span{
			{Topic: 2, Last: 1, Count: 1, Sum: idHash("100-1"), Start: idHash("0")},
			{Topic: 3, From: 4, Last: 5, Count: 1, Sum: idHash("100-5"), Start: idHash("90-0"), Open: true},
		}
		for i := range spans {
			spans[i].lastID = streams.ID{}
		}
		if !reflect.DeepEqual(spans, want) {
			t.Fatalf("spans %+v, want %+v", spans, want)
		}
		if sc.pending || sc.leaving != nil || w.soak.unexpected.Load() != 1 || wc.cursor.ID != "100-5" {
			t.Fatalf("pending %v, leaving %v, %d unexpected, cursor %+v", sc.pending, sc.leaving, w.soak.unexpected.Load(), wc.cursor)
		}
		if f := w.soakFinal([]uint64{0, 0, 2, 6}); f.NotReady != 1 || f.Missing != 0 {
			t.Fatalf("final %+v: want the connection not ready (it has no socket)", f)
		}
	})

	t.Run("error", func(t *testing.T) {
		w, wc := newSoakTestConn(t, 2, "0", 0)
		in := soakFrames([]byte(`{"type":"error","code":"unavailable","topic":"soak:2","message":"the bus is unavailable; retry"}`))
		if err := w.in.consume(wc, in, 2); err != nil {
			t.Fatal(err)
		}
		if !wc.soak.broken || w.soak.serverErrors.Load() != 1 || !strings.Contains(w.soakNotes()[0], "unavailable") {
			t.Fatalf("broken %v, %d server errors, notes %q", wc.soak.broken, w.soak.serverErrors.Load(), w.soakNotes())
		}
	})
}

// FuzzSoakConsume: a soak connection reads whatever a gateway sends
// without panicking, and the same bytes cut anywhere leave the same
// spans.
func FuzzSoakConsume(f *testing.F) {
	f.Add(soakFrames(soakEventMsg(2, "100-6", 6), soakEventMsg(2, "100-8", 8),
		[]byte(`{"type":"subscribed","topic":"soak:2","recovered":false,"epoch":"e","head":"1-1","seq":1}`)), 5)
	f.Add(soakFrames([]byte(`{"type":"error","topic":"soak:2"}`), []byte(`{"type":"unsubscribed","topic":"soak:9"}`), []byte(`nope`)), 9)
	f.Fuzz(func(t *testing.T, input []byte, cut int) {
		run := func(pieces ...[]byte) ([]Span, error) {
			w, wc := newSoakTestConn(t, 2, "100-5", 5)
			for _, p := range pieces {
				if err := w.in.consume(wc, bytes.Clone(p), 0); err != nil {
					return w.soakSpans(), err
				}
			}
			return w.soakSpans(), nil
		}
		whole, errWhole := run(input)
		cut = min(max(cut, 0), len(input))
		split, errSplit := run(input[:cut], input[cut:])
		if !reflect.DeepEqual(whole, split) || (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("whole: %+v, %v; cut at %d: %+v, %v", whole, errWhole, cut, split, errSplit)
		}
	})
}

// profile is a goroutine profile in the text form, cut down from a
// gateway's: idle pool workers, a worker running a task, and others.
const profile = `goroutine profile: total 141
136 @ 0x48f76e 0x46ba85 0xcd5fdb 0x497261
#	0xcd5fda	github.com/wsbus/wsbus/ws.(*pool).worker+0x17a	/work/ws/pool.go:97

2 @ 0x48f76e 0x450db7 0x48e945 0xd09915 0x497261
#	0x48e944	internal/poll.runtime_pollWait+0x84	/usr/local/go/src/runtime/netpoll.go:351
#	0xd09914	github.com/wsbus/wsbus/bus.(*Owner).readNew+0x134	/work/bus/pipeline.go:147

1 @ 0x4d2d2e 0xcd5fdb 0x497261
#	0x4d2d2d	syscall.Syscall+0x2ad	/usr/local/go/src/syscall/syscall_linux.go:73
#	0xcd5fda	github.com/wsbus/wsbus/ws.(*pool).worker+0x17a	/work/ws/pool.go:93

1 @ 0x48f76e 0x497261
# labels: {"x":"y"}
#	0x48f76d	github.com/wsbus/wsbus/ws.(*pool).worker.func1+0x4d	/work/ws/pool.go:120

1 @ 0x48f76e
`

func TestGoroutineCounts(t *testing.T) {
	total, idle, err := goroutineCounts([]byte(profile))
	if err != nil || total != 141 || idle != 136 {
		t.Fatalf("goroutineCounts = %d, %d, %v; want 141 goroutines, 136 of them idle pool workers", total, idle, err)
	}
	for _, bad := range []string{"", "goroutine 1 [running]:\n", "goroutine profile: total 1\nx1 @ 0x1\n", "goroutine profile: total 1\n-1 @ 0x1\n"} {
		if _, _, err := goroutineCounts([]byte(bad)); err == nil {
			t.Errorf("goroutineCounts(%q): no error", bad)
		}
	}
}

// FuzzGoroutineCounts: whatever a gateway's profile endpoint answers is
// read without panicking, and never counts more idle workers than
// goroutines.
func FuzzGoroutineCounts(f *testing.F) {
	f.Add([]byte(profile))
	f.Add([]byte("goroutine profile: total 2\n2 @\n#\t0x1\tgithub.com/wsbus/wsbus/ws.(*pool).worker\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		total, idle, err := goroutineCounts(b)
		if err == nil && (idle < 0 || idle > total) {
			t.Fatalf("%q: %d goroutines, %d idle workers", b, total, idle)
		}
	})
}
