package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
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
	v, _ := b.Redis.HGet(context.Background(), b.Keys.Acked(streams.Partition(topic, b.N), topic), "s:"+sub).Result()
	id, _, _ := strings.Cut(v, " ")
	return id
}

// waitCursor polls until sub's cursor on topic is want.
func (b *testBus) waitCursor(tb testing.TB, topic, sub, want string) {
	tb.Helper()
	testutil.Eventually(tb, testutil.Wait, func() error {
		if got := b.cursor(tb, topic, sub); got != want {
			return fmt.Errorf("cursor of %s on %s = %q, want %q", sub, topic, got, want)
		}
		return nil
	})
}

func TestAckMovesTheSubjectsCursorForwardOnly(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "inbox", 5)
	phone := wstest.Dial(t, b.node.url+"?user=ann")
	laptop := wstest.Dial(t, b.node.url+"?user=ann")
	ack(phone, "inbox", ids[2])
	b.waitCursor(t, "inbox", "ann", ids[2])
	ack(laptop, "inbox", ids[1]) // behind the cursor: no move, no error
	ack(laptop, "inbox", ids[3])
	b.waitCursor(t, "inbox", "ann", ids[3])
	ack(phone, "inbox", ids[0])
	ping(phone)
	phone.Expect("pong", testutil.Wait)
	time.Sleep(50 * time.Millisecond) // under test: the cursor stays put through several flushes
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
	ids := b.publishSeen(t, "errs", 3)
	anon := wstest.Dial(t, b.node.url)
	ack(anon, "errs", ids[0])
	if e := anon.Expect("error", testutil.Wait); e.Code != "no_subject" || e.Topic != "errs" {
		t.Fatalf("ack without a subject = %+v, want no_subject", e)
	}
	ping(anon)
	anon.Expect("pong", testutil.Wait)

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
			if e := c.Expect("error", testutil.Wait); e.Code != tt.code || e.Topic != tt.topic {
				t.Fatalf("ack %s %s = %+v, want %s", tt.topic, tt.id, e, tt.code)
			}
			ping(c)
			c.Expect("pong", testutil.Wait)
		})
	}
	c.Send(map[string]any{"type": "ack", "topic": 5})
	if e := c.Expect("error", testutil.Wait); e.Code != "bad_request" {
		t.Fatalf("malformed ack = %+v, want bad_request", e)
	}
	if got := b.cursor(t, "errs", "ann"); got != ids[1] {
		t.Fatalf("cursor = %s after bad acks, want %s", got, ids[1])
	}
}

// TestAckBurstKeepsTheValidOne: a valid ack and a higher, invalid one
// sent together (in one batch of the gateway's) move the cursor to the
// valid one, and only the invalid one is refused.
func TestAckBurstKeepsTheValidOne(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "burst", 3)
	c := wstest.Dial(t, b.node.url+"?user=bob")
	c.SendRaw([]byte(`{"type":"ack","topic":"burst","id":"` + ids[1] + `"}`))
	c.SendRaw([]byte(`{"type":"ack","topic":"burst","id":"9999999999999-0"}`))
	if e := c.Expect("error", testutil.Wait); e.Code != "bad_id" || !strings.Contains(e.Message, "9999999999999-0") {
		t.Fatalf("error = %+v, want bad_id for the invalid ack", e)
	}
	b.waitCursor(t, "burst", "bob", ids[1])
	c.ExpectQuiet(50 * time.Millisecond)
}

// bumped returns an ID just after id, which no event has.
func bumped(id string) string {
	v := streams.MustParseID(id)
	v.Seq += 1000
	return v.String()
}

func TestUnreadOverHTTP(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "badge", 5)
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
	ids := b.publishSeen(t, "inbox", 5)
	phone := wstest.Dial(t, b.node.url+"?user=ann")
	ack(phone, "inbox", ids[2])
	b.waitCursor(t, "inbox", "ann", ids[2])

	check := func(c *wstest.Client) {
		t.Helper()
		sub := c.Expect("subscribed", testutil.Wait)
		if !sub.Recovered || sub.Acked != ids[2] || sub.Unread == nil || *sub.Unread != 2 || sub.Head != ids[4] || sub.Seq != 5 {
			t.Fatalf("subscribed = %+v, want recovered, acked %s, unread 2, head %s seq 5", sub, ids[2], ids[4])
		}
		for i, ev := range c.Events(2, testutil.Wait) {
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
	if sub := bob.Expect("subscribed", testutil.Wait); sub.Acked != "0" || sub.Unread == nil || *sub.Unread != 5 {
		t.Fatalf("subscribed = %+v, want acked 0, unread 5", sub)
	}
	if evs := bob.Events(5, testutil.Wait); evs[0].ID != ids[0] {
		t.Fatalf("first event %s, want %s", evs[0].ID, ids[0])
	}

	anon := wstest.Dial(t, b.node.url)
	anon.Send(map[string]string{"type": "subscribe", "topic": "inbox", "since": "acked"})
	if e := anon.Expect("error", testutil.Wait); e.Code != "no_subject" {
		t.Fatalf("since acked without a subject = %+v, want no_subject", e)
	}
	ping(anon)
	anon.Expect("pong", testutil.Wait)
}

// TestSubscribedCarriesAckedAndUnread: every subscribe of a connection
// with a subject is told its cursor; one without a subject is not. Both
// devices see the cursor move.
func TestSubscribedCarriesAckedAndUnread(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "feed", 3)
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
			sub := c.Expect("subscribed", testutil.Wait)
			if sub.Acked != tt.acked || (sub.Unread == nil) != (tt.acked == "") || sub.Unread != nil && *sub.Unread != tt.unread {
				t.Fatalf("subscribed = %+v, want acked %q unread %d", sub, tt.acked, tt.unread)
			}
		})
	}
	ack(wstest.Dial(t, b.node.url+"?user=ann"), "feed", ids[1])
	b.waitCursor(t, "feed", "ann", ids[1])
	c := wstest.Dial(t, b.node.url+"?user=ann&topic=feed")
	if sub := c.Expect("subscribed", testutil.Wait); sub.Acked != ids[1] || *sub.Unread != 1 {
		t.Fatalf("subscribed = %+v, want acked %s unread 1", sub, ids[1])
	}
}

// TestUnreadCountsTrimmedEvents: unread is exact when the history has
// been trimmed past the cursor, and an ack of a trimmed event moves
// nothing back.
func TestUnreadCountsTrimmedEvents(t *testing.T) {
	b := newTestBus(t, "--history-len", "10")
	ids := b.publishSeen(t, "long", 300)
	c := wstest.Dial(t, b.node.url+"?user=ann")
	if n := len(b.historyIDs(t, "long")); n >= 300 {
		t.Fatalf("history holds %d events, want it trimmed", n)
	}
	ack(c, "long", ids[297])
	b.waitCursor(t, "long", "ann", ids[297])
	ack(c, "long", ids[3]) // trimmed, and behind the cursor: a late ack
	ping(c)
	c.Expect("pong", testutil.Wait)
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
	if e := bob.Expect("error", testutil.Wait); e.Code != "bad_id" {
		t.Fatalf("ack of a trimmed event with no cursor = %+v, want bad_id", e)
	}
}

// TestAckCatchUpBurst: a client that acks each event of a long catch-up
// as it comes sends hundreds of acks within one batch; none is refused
// and the cursor ends at the last (with 256 acks a connection per batch
// refused past the bound, half of them were: too_many_acks, the cursor
// left behind, unread wrong).
func TestAckCatchUpBurst(t *testing.T) {
	b := newTestBus(t)
	ids := b.publishSeen(t, "catchup", 600)
	c := wstest.Dial(t, b.node.url+"?user=ann")
	var burst bytes.Buffer // every ack in one write: one batch
	for _, id := range ids {
		if err := wsutil.WriteClientText(&burst, fmt.Appendf(nil, `{"type":"ack","topic":"catchup","id":%q}`, id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Conn.Write(burst.Bytes()); err != nil {
		t.Fatal(err)
	}
	ping(c)
	if m := c.Next(testutil.Wait); m.Type != "pong" {
		t.Fatalf("after 600 acks: %+v, want pong and no error", m)
	}
	b.waitCursor(t, "catchup", "ann", ids[599])
	c.ExpectQuiet(50 * time.Millisecond)
	status, res := httpJSON(t, "GET", "http://"+b.node.addr+"/v1/unread?topic=catchup&sub=ann", "")
	if status != 200 || res["acked"] != ids[599] || res["unread"] != float64(0) {
		t.Fatalf("unread = %d %v, want acked %s unread 0", status, res, ids[599])
	}
}

// escalations returns the entries of the bus's escalations stream.
func (b *testBus) escalations(tb testing.TB) []map[string]any {
	tb.Helper()
	msgs, err := b.Redis.XRange(context.Background(), b.Keys.Escalations(), "-", "+").Result()
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		out[i] = m.Values
	}
	return out
}

// TestDeadlineEscalatesOnceAcrossOwnerChange: an event nobody acknowledges
// in time is escalated once, whether it falls due before or after its
// partition changes owner; an acknowledged one never is.
func TestDeadlineEscalatesOnceAcrossOwnerChange(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	first := startNode(t, testConfig(t, srv, prefix, "--node-id", "first", "--lease-ttl", "1s"))
	b := &testBus{Bus: bustest.On(t, srv.Client(t), prefix), srv: srv, prefix: prefix}
	p := streams.Partition("alarm", b.N)

	early := b.XAddTo(t, p, "topic", "alarm", "data", `"early"`, "deadline", "50")
	seen := b.XAddTo(t, p, "topic", "alarm", "data", `"seen"`, "deadline", "1500")
	late := b.XAddTo(t, p, "topic", "alarm", "data", `"late"`, "deadline", "1500")
	c := wstest.Dial(t, first.url+"?user=ann")
	testutil.Eventually(t, testutil.Wait, func() error {
		if h := b.historyIDs(t, "alarm"); len(h) != 3 {
			return fmt.Errorf("history holds %d events", len(h))
		}
		return nil
	})
	testutil.Eventually(t, testutil.Wait, func() error {
		if e := b.escalations(t); len(e) != 1 || e[0]["id"] != early {
			return fmt.Errorf("escalations %v, want the early event", e)
		}
		return nil
	})
	// A cursor at seen covers early too: only now that early is escalated.
	ack(c, "alarm", seen)
	b.waitCursor(t, "alarm", "ann", seen) // late is after seen: still unacknowledged
	// The first node hands its partitions over before late falls due.
	first.stop()
	second := startNode(t, testConfig(t, srv, prefix, "--node-id", "second", "--lease-ttl", "1s"))
	testutil.Eventually(t, 10*time.Second, func() error {
		if e := b.escalations(t); len(e) != 2 {
			return fmt.Errorf("escalations %v, want early and late", e)
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // under test: nothing more comes
	e := b.escalations(t)
	want := []map[string]any{
		{"topic": "alarm", "id": early, "seq": "1", "data": `"early"`, "deadline": "50"},
		{"topic": "alarm", "id": late, "seq": "3", "data": `"late"`, "deadline": "1500"},
	}
	if len(e) != 2 || fmt.Sprint(e[0]) != fmt.Sprint(want[0]) || fmt.Sprint(e[1]) != fmt.Sprint(want[1]) {
		t.Fatalf("escalations = %v, want %v", e, want)
	}
	resp, err := httpClient.Get("http://" + second.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(text), "\nwsbus_bus_escalations_total 1\n") {
		t.Fatalf("the second owner's metrics do not count its one escalation:\n%s", text)
	}
}

func TestPublishWithDeadline(t *testing.T) {
	b := newTestBus(t)
	post := func(body string) (int, map[string]any) {
		return httpJSON(t, "POST", "http://"+b.node.addr+"/v1/publish", body)
	}
	status, res := post(`{"topic":"call","data":{"x":1},"deadline":1}`)
	if status != 200 {
		t.Fatalf("publish = %d %v", status, res)
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if e := b.escalations(t); len(e) != 1 || e[0]["id"] != res["id"] || e[0]["data"] != `{"x":1}` || e[0]["deadline"] != "1" {
			return fmt.Errorf("escalations %v, want the published event", e)
		}
		return nil
	})
	for _, body := range []string{
		`{"topic":"call","data":1,"deadline":0}`, `{"topic":"call","data":1,"deadline":-5}`,
		`{"topic":"call","data":1,"deadline":1.5}`, `{"topic":"call","data":1,"deadline":"30"}`,
		`{"topic":"call","data":1,"deadline":2592000001}`,
	} {
		if status, res := post(body); status != 400 || res["error"] == "" {
			t.Fatalf("publish %s = %d %v, want 400", body, status, res)
		}
	}
	// The command line takes one too.
	var out, errs strings.Builder
	if code := Main([]string{"publish", "--redis", b.srv.URL(), "--prefix", b.prefix, "--deadline", "1ms", "call", "2"}, &out, &errs); code != 0 {
		t.Fatalf("wsbus publish --deadline exited %d: %s", code, errs.String())
	}
	cli := strings.TrimSpace(out.String())
	testutil.Eventually(t, testutil.Wait, func() error {
		if e := b.escalations(t); len(e) != 2 || e[1]["id"] != cli {
			return fmt.Errorf("escalations %v, want the one published by wsbus publish, %s", e, cli)
		}
		return nil
	})
	if code := Main([]string{"publish", "--redis", b.srv.URL(), "--prefix", b.prefix, "--deadline", "1500us", "call", "2"}, &out, &errs); code == 0 {
		t.Fatal("wsbus publish took a deadline of 1500us, which is not whole milliseconds")
	}
	// An invalid deadline in a plain XADD is dead-lettered with a reason.
	p := streams.Partition("call", b.N)
	id := b.XAddTo(t, p, "topic", "call", "data", "1", "deadline", "soon")
	testutil.Eventually(t, testutil.Wait, func() error {
		dead := b.Redis.XRange(context.Background(), b.Keys.Dead(p), "-", "+").Val()
		if len(dead) != 1 || dead[0].Values["id"] != id || dead[0].Values["reason"] != "invalid deadline" {
			return fmt.Errorf("dead letters %v, want %s with reason invalid deadline", dead, id)
		}
		return nil
	})
}
