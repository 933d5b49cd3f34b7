package app

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// ack sends an ack message.
func ack(c *wstest.Client, topic, id string) {
	c.Send(map[string]string{"type": "ack", "topic": topic, "id": id})
}

// cursor returns the acked cursor of sub on topic as stored ("" if none).
func (b *testBus) cursor(tb testing.TB, topic, sub string) string {
	tb.Helper()
	v, _ := b.rdb.HGet(context.Background(), b.keys.Acked(streams.Partition(topic, b.n), topic), "s:"+sub).Result()
	id, _, _ := strings.Cut(v, " ")
	return id
}

// waitCursor polls until sub's cursor on topic is want.
func (b *testBus) waitCursor(tb testing.TB, topic, sub, want string) {
	tb.Helper()
	redistest.Eventually(tb, wait, func() error {
		if got := b.cursor(tb, topic, sub); got != want {
			return fmt.Errorf("cursor of %s on %s = %q, want %q", sub, topic, got, want)
		}
		return nil
	})
}

// published adds n events to topic and waits until its history holds them.
func (b *testBus) published(tb testing.TB, topic string, n int) []string {
	tb.Helper()
	var ids []string
	for i := range n {
		ids = append(ids, b.xadd(tb, topic, fmt.Sprintf(`{"n":%d}`, i)))
	}
	redistest.Eventually(tb, wait, func() error {
		if h := b.historyIDs(tb, topic); len(h) == 0 || h[len(h)-1] != ids[n-1] {
			return fmt.Errorf("history of %s not at %s yet", topic, ids[n-1])
		}
		return nil
	})
	return ids
}

func TestAckMovesTheSubjectsCursorForwardOnly(t *testing.T) {
	b := newTestBus(t)
	ids := b.published(t, "inbox", 5)
	phone := wstest.Dial(t, b.node.url+"?user=ann")
	laptop := wstest.Dial(t, b.node.url+"?user=ann")
	ack(phone, "inbox", ids[2])
	b.waitCursor(t, "inbox", "ann", ids[2])
	ack(laptop, "inbox", ids[1]) // behind the cursor: no move, no error
	ack(laptop, "inbox", ids[3])
	b.waitCursor(t, "inbox", "ann", ids[3])
	ack(phone, "inbox", ids[0])
	ping(phone)
	phone.Expect("pong", wait)
	time.Sleep(50 * time.Millisecond) // several flushes
	if got := b.cursor(t, "inbox", "ann"); got != ids[3] {
		t.Fatalf("cursor = %s after an older ack, want it still %s", got, ids[3])
	}
	laptop.ExpectQuiet(50 * time.Millisecond)
	phone.ExpectQuiet(50 * time.Millisecond)
	if got := b.cursor(t, "inbox", "bob"); got != "" {
		t.Fatalf("bob's cursor = %q, want none", got)
	}
}

func ping(c *wstest.Client) { c.Send(map[string]string{"type": "ping"}) }

func TestAckErrorsKeepTheConnection(t *testing.T) {
	b := newTestBus(t)
	ids := b.published(t, "errs", 3)
	anon := wstest.Dial(t, b.node.url)
	ack(anon, "errs", ids[0])
	if e := anon.Expect("error", wait); e.Code != "no_subject" || e.Topic != "errs" {
		t.Fatalf("ack without a subject = %+v, want no_subject", e)
	}
	ping(anon)
	anon.Expect("pong", wait)

	c := wstest.Dial(t, b.node.url+"?user=ann")
	ack(c, "errs", ids[1])
	b.waitCursor(t, "errs", "ann", ids[1])
	for _, tt := range []struct{ name, topic, id, code string }{
		{"not an ID", "errs", "x", "bad_id"},
		{"zero", "errs", "0", "bad_id"},
		{"beyond the head", "errs", "99999999999999-0", "bad_id"},
		{"between events", "errs", bumped(ids[2]), "bad_id"},
		{"older, never an event", "errs", "1-0", "bad_id"},
		{"another topic's event", "other", ids[2], "bad_id"},
		{"bad topic", "a b", ids[2], "bad_topic"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ack(c, tt.topic, tt.id)
			if e := c.Expect("error", wait); e.Code != tt.code || e.Topic != tt.topic {
				t.Fatalf("ack %s %s = %+v, want %s", tt.topic, tt.id, e, tt.code)
			}
			ping(c)
			c.Expect("pong", wait)
		})
	}
	c.Send(map[string]any{"type": "ack", "topic": 5})
	if e := c.Expect("error", wait); e.Code != "bad_request" {
		t.Fatalf("malformed ack = %+v, want bad_request", e)
	}
	if got := b.cursor(t, "errs", "ann"); got != ids[1] {
		t.Fatalf("cursor = %s after bad acks, want %s", got, ids[1])
	}
}

// bumped returns an ID just after id, which no event has.
func bumped(id string) string {
	v := streams.MustParseID(id)
	v.Seq += 1000
	return v.String()
}

func TestUnreadOverHTTP(t *testing.T) {
	b := newTestBus(t)
	ids := b.published(t, "badge", 5)
	c := wstest.Dial(t, b.node.url+"?user=ann")
	ack(c, "badge", ids[1])
	b.waitCursor(t, "badge", "ann", ids[1])
	get := func(query string) (int, map[string]any) {
		return httpJSON(t, "GET", "http://"+b.node.addr+"/v1/unread?"+query, "")
	}
	for _, tt := range []struct {
		name, query string
		acked       string
		unread      float64
	}{
		{"after an ack", "topic=badge&sub=ann", ids[1], 3},
		{"never acked", "topic=badge&sub=bob", "0", 5},
		{"empty topic", "topic=nothing&sub=ann", "0", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, res := get(tt.query)
			if status != 200 || res["acked"] != tt.acked || res["unread"] != tt.unread || res["topic"] == "" || res["sub"] == "" {
				t.Fatalf("unread?%s = %d %v, want acked %s unread %v", tt.query, status, res, tt.acked, tt.unread)
			}
		})
	}
	for _, q := range []string{"sub=ann", "topic=a%20b&sub=ann", "topic=badge", "topic=badge&sub=", "topic=badge&sub=" + strings.Repeat("x", 1025)} {
		if status, res := get(q); status != 400 || res["error"] == "" {
			t.Fatalf("unread?%s = %d %v, want 400 with an error", q, status, res)
		}
	}
}

// TestSinceAckedResumesFromTheCursor: a second device of the subject
// resumes from the cursor the first one moved, by message or query, and
// is told the cursor and the unread count.
func TestSinceAckedResumesFromTheCursor(t *testing.T) {
	b := newTestBus(t)
	ids := b.published(t, "inbox", 5)
	phone := wstest.Dial(t, b.node.url+"?user=ann")
	ack(phone, "inbox", ids[2])
	b.waitCursor(t, "inbox", "ann", ids[2])

	check := func(c *wstest.Client) {
		t.Helper()
		sub := c.Expect("subscribed", wait)
		if !sub.Recovered || sub.Acked != ids[2] || sub.Unread == nil || *sub.Unread != 2 || sub.Head != ids[4] || sub.Seq != 5 {
			t.Fatalf("subscribed = %+v, want recovered, acked %s, unread 2, head %s seq 5", sub, ids[2], ids[4])
		}
		for i, ev := range c.Events(2, wait) {
			if ev.ID != ids[3+i] || ev.Seq != uint64(4+i) {
				t.Fatalf("event %d = %+v, want %s seq %d", i, ev, ids[3+i], 4+i)
			}
		}
		c.ExpectQuiet(50 * time.Millisecond)
	}
	laptop := wstest.Dial(t, b.node.url+"?user=ann")
	laptop.Send(map[string]string{"type": "subscribe", "topic": "inbox", "since": "acked"})
	check(laptop)
	check(wstest.Dial(t, b.node.url+"?user=ann&topic=inbox&since=acked"))

	// A subject that never acknowledged resumes from the start.
	bob := wstest.Dial(t, b.node.url+"?user=bob&topic=inbox&since=acked")
	if sub := bob.Expect("subscribed", wait); sub.Acked != "0" || sub.Unread == nil || *sub.Unread != 5 {
		t.Fatalf("subscribed = %+v, want acked 0, unread 5", sub)
	}
	if evs := bob.Events(5, wait); evs[0].ID != ids[0] {
		t.Fatalf("first event %s, want %s", evs[0].ID, ids[0])
	}

	anon := wstest.Dial(t, b.node.url)
	anon.Send(map[string]string{"type": "subscribe", "topic": "inbox", "since": "acked"})
	if e := anon.Expect("error", wait); e.Code != "no_subject" {
		t.Fatalf("since acked without a subject = %+v, want no_subject", e)
	}
	ping(anon)
	anon.Expect("pong", wait)
}

// TestSubscribedCarriesAckedAndUnread: every subscribe of a connection
// with a subject is told its cursor; one without a subject is not. Both
// devices see the cursor move.
func TestSubscribedCarriesAckedAndUnread(t *testing.T) {
	b := newTestBus(t)
	ids := b.published(t, "feed", 3)
	for _, tt := range []struct {
		name, query, since string
		acked              string
		unread             uint64
	}{
		{"no since", "?user=ann", "", "0", 3},
		{"since an ID", "?user=ann", ids[0], "0", 3},
		{"since 0", "?user=ann", "0", "0", 3},
		{"no subject", "", "", "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := wstest.Dial(t, b.node.url+tt.query)
			c.Subscribe("feed", tt.since, "")
			sub := c.Expect("subscribed", wait)
			if sub.Acked != tt.acked || (sub.Unread == nil) != (tt.acked == "") || sub.Unread != nil && *sub.Unread != tt.unread {
				t.Fatalf("subscribed = %+v, want acked %q unread %d", sub, tt.acked, tt.unread)
			}
		})
	}
	ack(wstest.Dial(t, b.node.url+"?user=ann"), "feed", ids[1])
	b.waitCursor(t, "feed", "ann", ids[1])
	c := wstest.Dial(t, b.node.url+"?user=ann&topic=feed")
	if sub := c.Expect("subscribed", wait); sub.Acked != ids[1] || *sub.Unread != 1 {
		t.Fatalf("subscribed = %+v, want acked %s unread 1", sub, ids[1])
	}
}

// TestUnreadCountsTrimmedEvents: unread is exact when the history has
// been trimmed past the cursor, and an ack of a trimmed event moves
// nothing back.
func TestUnreadCountsTrimmedEvents(t *testing.T) {
	b := newTestBus(t, "--history-len", "10")
	ids := b.published(t, "long", 300)
	c := wstest.Dial(t, b.node.url+"?user=ann")
	if n := len(b.historyIDs(t, "long")); n >= 300 {
		t.Fatalf("history holds %d events, want it trimmed", n)
	}
	ack(c, "long", ids[297])
	b.waitCursor(t, "long", "ann", ids[297])
	ack(c, "long", ids[3]) // trimmed, and behind the cursor: a late ack
	ping(c)
	c.Expect("pong", wait)
	c.ExpectQuiet(50 * time.Millisecond)
	for _, tt := range []struct {
		sub, acked string
		unread     float64
	}{{"ann", ids[297], 2}, {"bob", "0", 300}} {
		status, res := httpJSON(t, "GET", "http://"+b.node.addr+"/v1/unread?topic=long&sub="+tt.sub, "")
		if status != 200 || res["acked"] != tt.acked || res["unread"] != tt.unread {
			t.Fatalf("unread of %s = %d %v, want acked %s unread %v", tt.sub, status, res, tt.acked, tt.unread)
		}
	}
	// bob's cursor is behind the trimmed event: it cannot be checked.
	bob := wstest.Dial(t, b.node.url+"?user=bob")
	ack(bob, "long", ids[3])
	if e := bob.Expect("error", wait); e.Code != "bad_id" {
		t.Fatalf("ack of a trimmed event with no cursor = %+v, want bad_id", e)
	}
}
