package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbus/wsbus/streams"
)

// TestParseEvent reads the bench's data back out of an event encoded the
// way the gateway encodes it.
func TestParseEvent(t *testing.T) {
	data, _ := json.Marshal(eventData{T: 1764150000123456789, K: kindUnicast})
	msg := streams.AppendEvent(nil, "bench:7", "1764150000123-4", 4, data)
	id, seq, topic, ts, k, ok := parseEvent(msg)
	if !ok || id != "1764150000123-4" || seq != 4 || string(topic) != "bench:7" || ts != 1764150000123456789 || k != kindUnicast {
		t.Fatalf("parseEvent(%s) = %q %d %q %d %d %v", msg, id, seq, topic, ts, k, ok)
	}
	for _, other := range []string{`{"type":"subscribed","topic":"a"}`, `{"type":"event","id":"1-1","topic":"a","data":"x"}`, `{"type":"event","id":"1-1`} {
		if _, _, _, _, _, ok := parseEvent([]byte(other)); ok {
			t.Errorf("parseEvent(%s) ok, want not an event of the bench", other)
		}
	}
}

// TestConsumeSplitFrames feeds the inbox a ping and three events cut in two
// at every offset, as reads may deliver them: every event is recorded once,
// in order, the repeated one counted as a duplicate, whatever the cut.
func TestConsumeSplitFrames(t *testing.T) {
	now := time.Now().UnixNano()
	var wire bytes.Buffer
	_ = ws.WriteFrame(&wire, ws.NewPingFrame([]byte("p")))
	for _, e := range []struct {
		id string
		k  int64
	}{{"5-1", 0}, {"5-2", kindUnicast}, {"5-2", kindUnicast}} {
		data, _ := json.Marshal(eventData{T: now - int64(time.Millisecond), K: e.k})
		// A long topic makes a payload over 125 bytes: the header's
		// 2-byte extended length is cut too.
		_ = ws.WriteFrame(&wire, ws.NewTextFrame(streams.AppendEvent(nil, "bench:"+strings.Repeat("x", 200), e.id, 1, data)))
	}
	in := &inbox{}
	for cut := 0; cut <= wire.Len(); cut++ {
		w := &worker{}
		in.w = w
		wc := &wconn{fd: -1, shard: &w.shards[0]}
		b := bytes.Clone(wire.Bytes())
		if err := in.consume(wc, b[:cut], now); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if err := in.consume(wc, b[cut:], now); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if got := w.received.Load(); got != 3 {
			t.Fatalf("cut %d: received %d, want 3", cut, got)
		}
		if d := w.dups.Load(); d != 1 || wc.cursor.ID != "5-2" || len(wc.rest) != 0 {
			t.Fatalf("cut %d: dups %d, last %s, %d bytes left", cut, d, wc.cursor.ID, len(wc.rest))
		}
		if w.shards[0].all.N != 1 || w.shards[0].unicast.N != 2 {
			t.Fatalf("cut %d: %d broadcast and %d unicast receipts, want 1 and 2", cut, w.shards[0].all.N, w.shards[0].unicast.N)
		}
	}
}

// FuzzConsume: the bench client reads whatever a server under test sends
// without panicking, and the same bytes cut anywhere give the same events.
func FuzzConsume(f *testing.F) {
	data, _ := json.Marshal(eventData{T: 1, K: 0})
	var wire bytes.Buffer
	_ = ws.WriteFrame(&wire, ws.NewTextFrame(streams.AppendEvent(nil, "t", "1-1", 1, data)))
	_ = ws.WriteFrame(&wire, ws.NewPingFrame(nil))
	f.Add(wire.Bytes(), 3)
	f.Add([]byte{0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1)
	f.Add([]byte{0x81, 0xfe, 0x00, 0x02, 1, 2, 3, 4, 'a', 'b'}, 0)
	f.Fuzz(func(t *testing.T, input []byte, cut int) {
		run := func(pieces ...[]byte) (uint64, error) {
			w := &worker{}
			in := &inbox{w: w}
			wc := &wconn{fd: -1, shard: &w.shards[0]}
			for _, p := range pieces {
				if err := in.consume(wc, bytes.Clone(p), 0); err != nil {
					return w.received.Load(), err
				}
			}
			return w.received.Load(), nil
		}
		whole, errWhole := run(input)
		cut = min(max(cut, 0), len(input))
		split, errSplit := run(input[:cut], input[cut:])
		if whole != split || (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("whole: %d events, %v; cut at %d: %d events, %v", whole, errWhole, cut, split, errSplit)
		}
	})
}

// TestStormCountsOnlyItsEvents: a resumed connection that gets a broadcast
// event it had not had yet (its server was behind at the drop) and a storm
// event counts one storm event: the storm's loss is its own events'.
func TestStormCountsOnlyItsEvents(t *testing.T) {
	w := &worker{}
	wc := &wconn{fd: -1, shard: &w.shards[0], resumed: true}
	now := time.Now().UnixNano()
	wc.mu.Lock()
	w.tally(wc, now-int64(time.Second), 7, now)
	w.tally(wc, now-int64(time.Millisecond), kindStorm, now)
	wc.mu.Unlock()
	if got := w.since.Load(); got != 1 {
		t.Fatalf("%d events counted since the resume, want the 1 storm event", got)
	}
	if got := w.received.Load(); got != 2 {
		t.Fatalf("%d events received, want 2", got)
	}
}
