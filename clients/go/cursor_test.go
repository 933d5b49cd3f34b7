package wsbus

import (
	"strconv"
	"strings"
	"testing"
)

func u64(n uint64) *uint64 { return &n }

// TestCursor drives a cursor through the answers and events of a
// topic's life and checks what it hands over, what gaps it reports and
// what it would resume with.
func TestCursor(t *testing.T) {
	type step struct {
		sub   *Message // a subscribed answer, or
		id    string   // an event
		seq   uint64
		fresh bool // the event is handed over
		gap   *Gap
	}
	tests := []struct {
		name   string
		start  Cursor
		steps  []step
		since  string
		seq    uint64
		hasSeq bool
		epoch  string
	}{
		{
			name:  "fresh subscriber keeps the head until its first event",
			steps: []step{{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "5-0", Seq: 7}}},
			since: "5-0", seq: 7, hasSeq: true, epoch: "e",
		},
		{
			name:  "empty topic: head 0, the next seq is 1",
			steps: []step{{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "0"}}, {id: "9-0", seq: 1, fresh: true}},
			since: "9-0", seq: 1, hasSeq: true, epoch: "e",
		},
		{
			name: "duplicates and older IDs are dropped",
			steps: []step{
				{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "5-0", Seq: 7}},
				{id: "6-0", seq: 8, fresh: true}, {id: "6-0", seq: 8}, {id: "5-9", seq: 7}, {id: "10-0", seq: 9, fresh: true},
			},
			since: "10-0", seq: 9, hasSeq: true, epoch: "e",
		},
		{
			name: "a seq that skips is a gap, and the cursor moves on",
			steps: []step{
				{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "5-0", Seq: 7}},
				{id: "6-0", seq: 10, fresh: true, gap: &Gap{Topic: "t", After: 7, Seq: 10}}, {id: "7-0", seq: 11, fresh: true},
			},
			since: "7-0", seq: 11, hasSeq: true, epoch: "e",
		},
		{
			name:  "not recovered: a gap with missed, the next seq taken as it comes",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "e"},
			steps: []step{
				{sub: &Message{Topic: "t", Epoch: "e", Head: "90-0", Seq: 90, Missed: u64(50)}, gap: &Gap{Topic: "t", Missed: u64(50)}},
				{id: "60-0", seq: 58, fresh: true}, {id: "61-0", seq: 59, fresh: true},
			},
			since: "61-0", seq: 59, hasSeq: true, epoch: "e",
		},
		{
			name:  "a new epoch with the head below the cursor: the head is the cursor to resume from",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "old"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "new", Head: "3-0", Seq: 2}, gap: &Gap{Topic: "t"}}},
			since: "3-0", seq: 2, hasSeq: true, epoch: "new",
		},
		{
			name:  "a new epoch with the head below the cursor: what is at or below the old cursor was handed over already (an older snapshot; ingress applied again by a new owner)",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "old"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "new", Head: "3-0", Seq: 2}, gap: &Gap{Topic: "t"}}, {id: "1-0", seq: 1}, {id: "3-0", seq: 2}, {id: "4-0", seq: 3}, {id: "5-0", seq: 4}, {id: "6-0", seq: 5, fresh: true}},
			since: "6-0", seq: 5, hasSeq: true, epoch: "new",
		},
		{
			name:  "a new epoch with the head past the cursor: the cursor's ID stays, its seq is not sent",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "old"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "new", Head: "9-0", Seq: 4}, gap: &Gap{Topic: "t"}}, {id: "4-0", seq: 2}, {id: "5-0", seq: 3}},
			since: "5-0", epoch: "new",
		},
		{
			name:  "a new epoch: what follows the cursor is handed over, its seq taken as it comes",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "old"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "new", Head: "9-0", Seq: 4}, gap: &Gap{Topic: "t"}}, {id: "5-0", seq: 3}, {id: "9-0", seq: 4, fresh: true}},
			since: "9-0", seq: 4, hasSeq: true, epoch: "new",
		},
		{
			name: "seq 1 after others: a new sequence, not a gap",
			steps: []step{
				{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "5-0", Seq: 7}},
				{id: "9000-0", seq: 1, fresh: true}, {id: "9001-0", seq: 2, fresh: true},
			},
			since: "9001-0", seq: 2, hasSeq: true, epoch: "e",
		},
		{
			name:  "a cursor beyond the stream's head: the same",
			start: Cursor{ID: "50-0", Seq: 7, Epoch: "e"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "e", Head: "3-0", Seq: 2}, gap: &Gap{Topic: "t"}}, {id: "3-0", seq: 2}, {id: "50-0", seq: 3}, {id: "51-0", seq: 4, fresh: true}},
			since: "51-0", seq: 4, hasSeq: true, epoch: "e",
		},
		{
			name:  "trimmed under the same epoch: only what follows the cursor",
			start: Cursor{ID: "5-0", Seq: 7, Epoch: "e"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "e", Head: "30-0", Seq: 30, Missed: u64(3)}, gap: &Gap{Topic: "t", Missed: u64(3)}}, {id: "4-0", seq: 6}, {id: "20-0", seq: 11, fresh: true}},
			since: "20-0", seq: 11, hasSeq: true, epoch: "e",
		},
		{
			name:  "acked: the subject's cursor, its seq unknown",
			start: Cursor{ID: "acked"},
			steps: []step{{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "9-0", Seq: 9, Acked: "4-0", Unread: u64(5)}}, {id: "5-0", seq: 5, fresh: true}, {id: "6-0", seq: 6, fresh: true}},
			since: "6-0", seq: 6, hasSeq: true, epoch: "e",
		},
		{
			name:  "acked by nobody yet: from 0",
			start: Cursor{ID: "acked"},
			steps: []step{{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "9-0", Seq: 2}}, {id: "8-0", seq: 1, fresh: true}},
			since: "8-0", seq: 1, hasSeq: true, epoch: "e",
		},
		{
			name:  "everything retained, trimmed: seq 1 is not there",
			start: Cursor{ID: "0"},
			steps: []step{{sub: &Message{Topic: "t", Epoch: "e", Head: "9-0", Seq: 9, Missed: u64(4)}, gap: &Gap{Topic: "t", Missed: u64(4)}}, {id: "5-0", seq: 5, fresh: true}},
			since: "5-0", seq: 5, hasSeq: true, epoch: "e",
		},
		{
			name:  "an ID without seq is resumed without one",
			start: Cursor{ID: "5-0"},
			steps: []step{{sub: &Message{Topic: "t", Recovered: true, Epoch: "e", Head: "5-0", Seq: 3}}},
			since: "5-0", hasSeq: false, epoch: "e",
		},
		{name: "nothing seen: nothing to resume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.start
			for i, st := range tt.steps {
				if st.sub != nil {
					if gap := c.Subscribed(st.sub); !sameGap(gap, st.gap) {
						t.Fatalf("step %d: Subscribed gap = %+v, want %+v", i, gap, st.gap)
					}
					continue
				}
				fresh, gap := c.Event(st.id, st.seq)
				if gap != nil {
					gap.Topic = "t"
				}
				if fresh != st.fresh || !sameGap(gap, st.gap) {
					t.Fatalf("step %d: Event(%s, %d) = %v, %+v; want %v, %+v", i, st.id, st.seq, fresh, gap, st.fresh, st.gap)
				}
			}
			since, seq, hasSeq, epoch := c.Resume()
			if since != tt.since || seq != tt.seq || hasSeq != tt.hasSeq || epoch != tt.epoch {
				t.Fatalf("Resume = %q %d %v %q, want %q %d %v %q", since, seq, hasSeq, epoch, tt.since, tt.seq, tt.hasSeq, tt.epoch)
			}
		})
	}
}

func sameGap(a, b *Gap) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Topic == b.Topic && a.After == b.After && a.Seq == b.Seq &&
		(a.Missed == nil) == (b.Missed == nil) && (a.Missed == nil || *a.Missed == *b.Missed)
}

func TestIDLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"1-0", "1-1", true}, {"1-1", "1-0", false}, {"9-9", "10-0", true}, {"10-0", "9-9", false},
		{"0", "0-1", true}, {"5", "5-0", false}, {"5-0", "5-0", false}, {"x", "0", true},
		{"18446744073709551615-0", "18446744073709551614-5", false},
	} {
		if got := idLess(tc.a, tc.b); got != tc.less {
			t.Errorf("idLess(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.less)
		}
	}
}

func TestCursorText(t *testing.T) {
	c := Cursor{ID: "5-1", Seq: 9, Epoch: "e"}
	b, err := c.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var back Cursor
	if err := back.UnmarshalText(b); err != nil || back != c {
		t.Fatalf("%s decodes to %+v, %v", b, back, err)
	}
}

func TestTokenExpiry(t *testing.T) {
	// {"alg":"HS256"}.{"sub":"a","exp":1893456000}.sig
	exp, ok := tokenExpiry("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoxODkzNDU2MDAwfQ.c2ln")
	if !ok || exp.Unix() != 1893456000 {
		t.Fatalf("tokenExpiry = %v, %v", exp, ok)
	}
	for _, bad := range []string{"", "a.b", "a.!!.c", "a.e30.c"} {
		if _, ok := tokenExpiry(bad); ok {
			t.Errorf("tokenExpiry(%q) found an expiry", bad)
		}
	}
}

// FuzzCursorEvents: whatever IDs and seqs a server sends, the cursor hands
// over only IDs that increase, and never panics.
func FuzzCursorEvents(f *testing.F) {
	f.Add("5-0", uint64(7), "6-0 8 6-0 8 5-9 7 x 1 10-0 12", true)
	f.Add("0", uint64(0), "1-1 1 1-1 1 0-5 9", false)
	f.Add("", uint64(0), "18446744073709551615-18446744073709551615 1 99999999999999999999-0 2", true)
	f.Fuzz(func(t *testing.T, head string, headSeq uint64, events string, recovered bool) {
		var c Cursor
		c.Subscribed(&Message{Topic: "t", Recovered: recovered, Epoch: "e", Head: head, Seq: headSeq})
		var handed []string
		fields := strings.Fields(events)
		for i := 0; i+1 < len(fields); i += 2 {
			seq, _ := strconv.ParseUint(fields[i+1], 10, 64)
			if fresh, _ := c.Event(fields[i], seq); fresh {
				handed = append(handed, fields[i])
			}
		}
		for i := 1; i < len(handed); i++ {
			if !idLess(handed[i-1], handed[i]) {
				t.Fatalf("handed %q after %q", handed[i], handed[i-1])
			}
		}
	})
}

func TestCursorSubscribe(t *testing.T) {
	var fresh Cursor
	if got := string(fresh.Subscribe("a")); got != `{"topic":"a","type":"subscribe"}` {
		t.Errorf("a fresh cursor's subscribe = %s, want only new events", got)
	}
	c := Cursor{ID: "5-1", Seq: 7, Epoch: "e1"}
	if got := string(c.Subscribe("a")); got != `{"epoch":"e1","seq":7,"since":"5-1","topic":"a","type":"subscribe"}` {
		t.Errorf("subscribe = %s, want since, seq and epoch", got)
	}
}
