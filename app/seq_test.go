package app

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// resume sends a subscribe with a full cursor: since, its seq and epoch.
func resume(c *wstest.Client, topic, since string, seq uint64, epoch string) {
	c.Send(map[string]any{"type": "subscribe", "topic": topic, "since": since, "seq": seq, "epoch": epoch})
}

// historySeqs returns the seq field of every entry of topic's history.
func (b *testBus) historySeqs(tb testing.TB, topic string) []uint64 {
	tb.Helper()
	msgs, err := b.Redis.XRange(context.Background(), b.Keys.Topic(streams.Partition(topic, b.N), topic), "-", "+").Result()
	if err != nil {
		tb.Fatalf("XRANGE: %v", err)
	}
	seqs := make([]uint64, len(msgs))
	for i, m := range msgs {
		s, _ := m.Values["seq"].(string)
		seqs[i], err = strconv.ParseUint(s, 10, 64)
		if err != nil {
			tb.Fatalf("history entry %s has seq %q", m.ID, s)
		}
	}
	return seqs
}

// publishSeen publishes n events to topic and waits until the owner has
// written the last one to history; it returns their IDs.
func (b *testBus) publishSeen(tb testing.TB, topic string, n int) []string {
	tb.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = b.XAdd(tb, topic, strconv.Itoa(i))
	}
	testutil.Eventually(tb, testutil.Wait, func() error {
		if h := b.historyIDs(tb, topic); len(h) == 0 || h[len(h)-1] != ids[n-1] {
			return fmt.Errorf("history of %s does not end at %s yet", topic, ids[n-1])
		}
		return nil
	})
	return ids
}

// TestFreshSubscriberHasACursor: a subscriber that drops before its first
// event reconnects with the head it was given and misses nothing.
func TestFreshSubscriberHasACursor(t *testing.T) {
	b := newTestBus(t)
	tests := []struct {
		name   string
		before int // events published before the first subscribe
	}{
		{"topic with history", 3},
		{"topic never published to", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic := "fresh:" + strconv.Itoa(tt.before)
			var old []string
			if tt.before > 0 {
				old = b.publishSeen(t, topic, tt.before)
			}
			c := wstest.Dial(t, b.node.url)
			c.Subscribe(topic, "", "")
			sub := c.Expect("subscribed", testutil.Wait)
			wantHead := "0"
			if tt.before > 0 {
				wantHead = old[len(old)-1]
			}
			if !sub.Recovered || sub.Head != wantHead || sub.Seq != uint64(tt.before) {
				t.Fatalf("subscribed = %+v, want head %s seq %d", sub, wantHead, tt.before)
			}
			_ = c.Conn.Close() // dropped before any event

			missed := b.publishSeen(t, topic, 4)
			c = wstest.Dial(t, b.node.url)
			resume(c, topic, sub.Head, sub.Seq, sub.Epoch)
			if again := c.Expect("subscribed", testutil.Wait); !again.Recovered || again.Head != missed[3] || again.Seq != uint64(tt.before+4) {
				t.Fatalf("resumed = %+v, want recovered, head %s seq %d", again, missed[3], tt.before+4)
			}
			for i, ev := range c.Events(4, testutil.Wait) {
				if ev.ID != missed[i] || ev.Seq != uint64(tt.before+i+1) {
					t.Fatalf("event %d = %s seq %d, want %s seq %d", i, ev.ID, ev.Seq, missed[i], tt.before+i+1)
				}
			}
			c.ExpectQuiet(100 * time.Millisecond)
		})
	}
}

// TestSeqIsContiguous: events carry seq 1, 2, 3, ... per topic, live and
// from history alike, and history stores the same numbers.
func TestSeqIsContiguous(t *testing.T) {
	b := newTestBus(t)
	topics := []string{"seq:a", "seq:b", "seq:c"}
	live := wstest.Dial(t, b.node.url)
	for _, topic := range topics {
		live.Subscribe(topic, "", "")
		live.Expect("subscribed", testutil.Wait)
	}
	const per = 60
	for i := range per {
		for _, topic := range topics {
			b.XAdd(t, topic, strconv.Itoa(i))
		}
	}
	next := map[string]uint64{}
	for _, ev := range live.Events(per*len(topics), testutil.Wait) {
		if next[ev.Topic]++; ev.Seq != next[ev.Topic] {
			t.Fatalf("live event %s of %s has seq %d, want %d", ev.ID, ev.Topic, ev.Seq, next[ev.Topic])
		}
	}
	for _, topic := range topics {
		for i, seq := range b.historySeqs(t, topic) {
			if seq != uint64(i+1) {
				t.Fatalf("history entry %d of %s has seq %d, want %d", i, topic, seq, i+1)
			}
		}
		c := wstest.Dial(t, b.node.url)
		c.Subscribe(topic, "0", "")
		c.Expect("subscribed", testutil.Wait)
		for i, ev := range c.Events(per, testutil.Wait) {
			if ev.Seq != uint64(i+1) {
				t.Fatalf("history event %d of %s has seq %d, want %d", i, topic, ev.Seq, i+1)
			}
		}
	}
}

// TestMissedIsExact: a resume that finds events trimmed after its cursor
// is told exactly how many it will never see, when it can be known.
func TestMissedIsExact(t *testing.T) {
	b := newTestBus(t)
	ctx := context.Background()
	ids := b.publishSeen(t, "trimmed", 30)
	key := b.Keys.Topic(streams.Partition("trimmed", b.N), "trimmed")
	if err := b.Redis.XTrimMaxLen(ctx, key, 10).Err(); err != nil {
		t.Fatal(err)
	}
	ctl := wstest.Dial(t, b.node.url)
	ctl.Subscribe("trimmed", "", "")
	epoch := ctl.Expect("subscribed", testutil.Wait).Epoch
	retained := ids[20:] // seq 21..30

	tests := []struct {
		name      string
		since     string
		seq       *uint64
		epoch     string
		recovered bool
		missed    *uint64
		want      []string
	}{
		{"cursor at seq 5", ids[4], u64(5), epoch, false, u64(15), retained},
		{"cursor just before the first retained", ids[19], u64(20), epoch, true, nil, retained},
		{"cursor just before the first retained without its seq", ids[19], nil, epoch, false, nil, retained},
		{"cursor at seq 5 without its seq", ids[4], nil, epoch, false, nil, retained},
		{"everything, from seq 0", "0", u64(0), epoch, false, u64(20), retained},
		{"changed epoch", ids[4], u64(5), "another", false, nil, retained},
		{"a seq that cannot be the cursor's", ids[4], u64(29), epoch, false, nil, retained},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := wstest.Dial(t, b.node.url)
			m := map[string]any{"type": "subscribe", "topic": "trimmed", "since": tt.since, "epoch": tt.epoch}
			if tt.seq != nil {
				m["seq"] = *tt.seq
			}
			c.Send(m)
			sub := c.Expect("subscribed", testutil.Wait)
			if sub.Recovered != tt.recovered || !sameMissed(sub.Missed, tt.missed) || sub.Head != ids[29] || sub.Seq != 30 {
				t.Fatalf("subscribed = %+v (missed %v), want recovered %v, missed %v, head %s seq 30",
					sub, fmtMissed(sub.Missed), tt.recovered, fmtMissed(tt.missed), ids[29])
			}
			for i, ev := range c.Events(len(tt.want), testutil.Wait) {
				if ev.ID != tt.want[i] || ev.Seq != uint64(21+i) {
					t.Fatalf("event %d = %s seq %d, want %s seq %d", i, ev.ID, ev.Seq, tt.want[i], 21+i)
				}
			}
			c.ExpectQuiet(100 * time.Millisecond)
		})
	}
}

// TestSequenceRestartsAfterExpiry: when a topic's idle history expires its
// sequence starts again at 1, and a cursor from before is not recovered,
// with no missed count (it cannot be known).
func TestSequenceRestartsAfterExpiry(t *testing.T) {
	b := newTestBus(t)
	old := b.publishSeen(t, "idle", 5)
	key := b.Keys.Topic(streams.Partition("idle", b.N), "idle")
	if err := b.Redis.Del(context.Background(), key).Err(); err != nil { // as the key's TTL would
		t.Fatal(err)
	}
	ctl := wstest.Dial(t, b.node.url)
	ctl.Subscribe("idle", "", "")
	epoch := ctl.Expect("subscribed", testutil.Wait).Epoch
	now := b.publishSeen(t, "idle", 3)
	if seqs := b.historySeqs(t, "idle"); fmt.Sprint(seqs) != "[1 2 3]" {
		t.Fatalf("history seqs after expiry = %v, want [1 2 3]", seqs)
	}
	c := wstest.Dial(t, b.node.url)
	resume(c, "idle", old[1], 2, epoch)
	if sub := c.Expect("subscribed", testutil.Wait); sub.Recovered || sub.Missed != nil || sub.Head != now[2] || sub.Seq != 3 {
		t.Fatalf("subscribed = %+v (missed %v), want not recovered, no missed, head %s seq 3", sub, fmtMissed(sub.Missed), now[2])
	}
	for i, ev := range c.Events(3, testutil.Wait) {
		if ev.ID != now[i] || ev.Seq != uint64(i+1) {
			t.Fatalf("event %d = %s seq %d, want %s seq %d", i, ev.ID, ev.Seq, now[i], i+1)
		}
	}
	// A cursor of the new sequence resumes as usual.
	c = wstest.Dial(t, b.node.url)
	resume(c, "idle", now[0], 1, epoch)
	if sub := c.Expect("subscribed", testutil.Wait); !sub.Recovered {
		t.Fatalf("subscribed = %+v, want recovered", sub)
	}
	if evs := c.Events(2, testutil.Wait); evs[0].ID != now[1] || evs[1].ID != now[2] {
		t.Fatalf("events = %+v, want %v", evs, now[1:])
	}
}

func u64(n uint64) *uint64 { return &n }

func sameMissed(a, b *uint64) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }

func fmtMissed(m *uint64) string {
	if m == nil {
		return "absent"
	}
	return strconv.FormatUint(*m, 10)
}

// TestHTTPHistoryResume: GET /v1/history takes the seq of since, as a
// WebSocket subscribe does, to prove recovered and count missed, and
// answers with the topic's head and its seq.
func TestHTTPHistoryResume(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "trimmed", 30)
	key := b.Keys.Topic(streams.Partition("trimmed", b.N), "trimmed")
	if err := b.Redis.XTrimMaxLen(context.Background(), key, 10).Err(); err != nil {
		t.Fatal(err)
	}
	base := "http://" + b.node.addr + "/v1/history?topic="
	_, first := httpJSON(t, "GET", base+"trimmed", "")
	epoch, _ := first["epoch"].(string)
	if epoch == "" {
		t.Fatalf("history = %v, want an epoch", first)
	}
	tests := []struct {
		name, since, seq, epoch string
		recovered               bool
		missed                  *uint64
		from                    int // index in ids of the first event answered
	}{
		{"cursor at seq 5", ids[4], "5", epoch, false, u64(15), 20},
		{"cursor just before the first retained", ids[19], "20", epoch, true, nil, 20},
		{"cursor just before the first retained without its seq", ids[19], "", epoch, false, nil, 20},
		{"cursor at seq 5 without its seq", ids[4], "", epoch, false, nil, 20},
		{"cursor among the retained", ids[25], "26", epoch, true, nil, 26},
		{"everything, from seq 0", "0", "0", epoch, false, u64(20), 20},
		{"changed epoch", ids[4], "5", "another", false, nil, 20},
		{"a seq that cannot be the cursor's", ids[4], "29", epoch, false, nil, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := base + "trimmed&since=" + tt.since + "&epoch=" + tt.epoch
			if tt.seq != "" {
				url += "&seq=" + tt.seq
			}
			status, h := httpJSON(t, "GET", url, "")
			var missed *uint64
			if m, ok := h["missed"].(float64); ok {
				missed = u64(uint64(m))
			}
			if status != 200 || h["topic"] != "trimmed" || h["epoch"] != epoch || h["recovered"] != tt.recovered ||
				!sameMissed(missed, tt.missed) || h["head"] != ids[29] || h["seq"] != float64(30) || h["more"] != false {
				t.Fatalf("history = %d %v (missed %s), want recovered %v, missed %s, head %s seq 30",
					status, h, fmtMissed(missed), tt.recovered, fmtMissed(tt.missed), ids[29])
			}
			events, _ := h["events"].([]any)
			if len(events) != 30-tt.from {
				t.Fatalf("%d events, want %d", len(events), 30-tt.from)
			}
			for i, e := range events {
				ev, _ := e.(map[string]any)
				if ev["id"] != ids[tt.from+i] || ev["seq"] != float64(tt.from+i+1) {
					t.Fatalf("event %d = %v, want id %s seq %d", i, ev, ids[tt.from+i], tt.from+i+1)
				}
			}
		})
	}
	t.Run("topic never published to", func(t *testing.T) {
		status, h := httpJSON(t, "GET", base+"never&since=0&seq=0", "")
		if events, _ := h["events"].([]any); status != 200 || h["recovered"] != true || h["head"] != "0" || h["seq"] != float64(0) ||
			h["missed"] != nil || events == nil || len(events) != 0 {
			t.Fatalf("history = %d %v, want recovered, head 0, seq 0, no events", status, h)
		}
	})
	for _, seq := range []string{"x", "-1", "%2B1", "1.5", "01", "18446744073709551616"} {
		t.Run("seq "+seq, func(t *testing.T) {
			status, h := httpJSON(t, "GET", base+"trimmed&since="+ids[4]+"&seq="+seq, "")
			if want := "seq must be the non-negative integer seq of the event since names"; status != 400 || h["error"] != want {
				t.Fatalf("history = %d %v, want 400 %q", status, h, want)
			}
		})
	}
}

// TestResumeAfterHistoryWentBack: Redis lost a topic's newest events
// without the partition's epoch changing (a failover whose loss no
// owner's check saw) and new events took their seqs: a cursor on a lost
// event is not recovered (its seq does not lead to what follows it), so
// the client knows the events after it are not the ones it missed. The
// epoch is left as it is: only the client's claim shows the loss.
func TestResumeAfterHistoryWentBack(t *testing.T) {
	b := newTestBus(t)
	ctx := context.Background()
	ids := b.publishSeen(t, "back", 10)
	key := b.Keys.Topic(streams.Partition("back", b.N), "back")
	kept, err := b.Redis.XRangeN(ctx, key, "-", "+", 7).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The stream as a replica that never had the last three would hold it.
	if err := b.Redis.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	for _, m := range kept {
		if err := b.Redis.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: m.ID, Values: m.Values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ctl := wstest.Dial(t, b.node.url)
	ctl.Subscribe("back", "", "")
	epoch := ctl.Expect("subscribed", testutil.Wait).Epoch
	var fresh []string
	for i := range 3 {
		fresh = append(fresh, b.XAdd(t, "back", "new"+strconv.Itoa(i)))
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if h := b.historyIDs(t, "back"); h[len(h)-1] != fresh[2] {
			return fmt.Errorf("history of back does not end at %s yet", fresh[2])
		}
		return nil
	})

	c := wstest.Dial(t, b.node.url)
	c.Send(map[string]any{"type": "subscribe", "topic": "back", "since": ids[9], "seq": 10, "epoch": epoch})
	if sub := c.Expect("subscribed", testutil.Wait); sub.Recovered || sub.Missed != nil || sub.Epoch != epoch {
		t.Fatalf("subscribed = %+v: a cursor on a lost event was trusted, or the epoch %s changed", sub, epoch)
	}
	for i, ev := range c.Events(len(fresh), testutil.Wait) {
		if ev.ID != fresh[i] || ev.Seq != uint64(8+i) {
			t.Fatalf("event %d = %s seq %d, want %s seq %d", i, ev.ID, ev.Seq, fresh[i], 8+i)
		}
	}
	c.ExpectQuiet(100 * time.Millisecond)
}
