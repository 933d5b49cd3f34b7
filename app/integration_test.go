package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

func TestLiveDeliveryInOrder(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("orders", "", "")
	sub := c.Expect("subscribed", testutil.Wait)
	if !sub.Recovered || sub.Epoch == "" {
		t.Fatalf("subscribed = %+v, want recovered with an epoch", sub)
	}
	var ids []string
	for i := range 200 {
		ids = append(ids, b.XAdd(t, "orders", fmt.Sprintf(`{"n":%d}`, i)))
	}
	for i, ev := range c.Events(200, testutil.Wait) {
		if ev.Topic != "orders" || ev.ID != ids[i] || string(ev.Data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("event %d = %+v, want id %s data {\"n\":%d}", i, ev, ids[i], i)
		}
	}
	c.ExpectQuiet(100 * time.Millisecond)
}

func TestDataEncoding(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url+"?topic=enc")
	c.Expect("subscribed", testutil.Wait)
	tests := []struct{ name, data, want string }{
		{"object", `{"a":1}`, `{"a":1}`},
		{"number", `42`, `42`},
		{"json string", `"quoted"`, `"quoted"`},
		{"plain text", `hello world`, `"hello world"`},
		{"text with quotes", `say "hi"`, `"say \"hi\""`},
		{"empty", ``, `""`},
		{"JSON but for its UTF-8", "\"\xff\xfe\"", `"\"\ufffd\ufffd\""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b.XAdd(t, "enc", tt.data)
			if ev := c.Events(1, testutil.Wait)[0]; string(ev.Data) != tt.want {
				t.Fatalf("data = %s, want %s", ev.Data, tt.want)
			}
		})
	}
}

func TestResumeGetsExactlyTheMissedEvents(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("chat", "", "")
	epoch := c.Expect("subscribed", testutil.Wait).Epoch
	for i := range 5 {
		b.XAdd(t, "chat", strconv.Itoa(i))
	}
	seen := c.Events(5, testutil.Wait)
	_ = c.Conn.Close()

	var missed []string
	for i := 5; i < 12; i++ {
		missed = append(missed, b.XAdd(t, "chat", strconv.Itoa(i)))
	}
	c = wstest.Dial(t, b.node.url)
	c.Subscribe("chat", seen[4].ID, epoch)
	if sub := c.Expect("subscribed", testutil.Wait); !sub.Recovered || sub.Epoch != epoch {
		t.Fatalf("subscribed = %+v, want recovered with epoch %s", sub, epoch)
	}
	for i, ev := range c.Events(7, testutil.Wait) {
		if ev.ID != missed[i] {
			t.Fatalf("missed event %d = %s, want %s", i, ev.ID, missed[i])
		}
	}
	live := b.XAdd(t, "chat", "live")
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != live {
		t.Fatalf("live event = %s, want %s", ev.ID, live)
	}
	c.ExpectQuiet(100 * time.Millisecond)
}

// TestResumeWhilePublishing resumes in the middle of a stream of events:
// history, held live events and live ones must join with no gap and no
// duplicate.
func TestResumeWhilePublishing(t *testing.T) {
	b := newTestBus(t)
	const total = 400
	ids := make([]string, 0, total)
	var mu sync.Mutex
	for range 100 {
		ids = append(ids, b.XAdd(t, "feed", "x"))
	}
	// A client's cursor is an ID it was sent, so it is in history already.
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := len(b.historyIDs(t, "feed")); n < 100 {
			return fmt.Errorf("history holds %d of 100 events", n)
		}
		return nil
	})
	since := ids[49]
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range total - 100 {
			id := b.XAdd(t, "feed", "x")
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
			time.Sleep(200 * time.Microsecond) // paced, so that the resume happens while it publishes
		}
	}()
	c := wstest.Dial(t, b.node.url+"?topic=feed&since="+since)
	if sub := c.Expect("subscribed", testutil.Wait); !sub.Recovered {
		t.Fatalf("subscribed = %+v, want recovered", sub)
	}
	<-done
	got := c.Events(total-50, testutil.Wait)
	for i, ev := range got {
		if ev.ID != ids[50+i] {
			t.Fatalf("event %d = %s, want %s", i, ev.ID, ids[50+i])
		}
	}
	c.ExpectQuiet(100 * time.Millisecond)
}

func TestNotRecovered(t *testing.T) {
	b := newTestBus(t, "--history-len", "10")
	var ids []string
	for i := range 500 {
		ids = append(ids, b.XAdd(t, "trim", strconv.Itoa(i)))
	}
	var retained []string
	testutil.Eventually(t, testutil.Wait, func() error {
		if retained = b.historyIDs(t, "trim"); len(retained) == 0 || retained[len(retained)-1] != ids[499] {
			return fmt.Errorf("history holds %d events, want it to end at %s", len(retained), ids[499])
		}
		return nil
	})
	ctl := wstest.Dial(t, b.node.url+"?topic=trim&since=0")
	epoch := ctl.Expect("subscribed", testutil.Wait).Epoch
	if len(retained) >= 500 || retained[len(retained)-1] != ids[499] {
		t.Fatalf("history holds %d entries ending %s: want it trimmed, ending %s", len(retained), retained[len(retained)-1], ids[499])
	}
	tests := []struct {
		name, topic, since, epoch string
		recovered                 bool
		want                      []string // events expected after subscribed
	}{
		{"cursor before trimmed events", "trim", ids[0], epoch, false, retained},
		{"cursor beyond the last ID", "trim", "99999999999999-0", epoch, false, retained},
		{"changed epoch", "trim", ids[480], "another", false, retained},
		{"same epoch, nothing trimmed after cursor", "trim", ids[495], epoch, true, ids[496:]},
		{"new topic from the start", "fresh", "0", "", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := wstest.Dial(t, b.node.url)
			c.Subscribe(tt.topic, tt.since, tt.epoch)
			if sub := c.Expect("subscribed", testutil.Wait); sub.Recovered != tt.recovered {
				t.Fatalf("recovered = %v, want %v", sub.Recovered, tt.recovered)
			}
			for i, ev := range c.Events(len(tt.want), testutil.Wait) {
				if ev.ID != tt.want[i] {
					t.Fatalf("event %d = %s, want %s", i, ev.ID, tt.want[i])
				}
			}
			c.ExpectQuiet(100 * time.Millisecond)
		})
	}
}

func TestMisroutedEntriesAreForwarded(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url+"?topic=lost")
	c.Expect("subscribed", testutil.Wait)
	right := streams.Partition("lost", b.N)
	wrong := (right + 1) % b.N
	var misrouted []string
	for i := range 3 {
		misrouted = append(misrouted, b.XAddTo(t, wrong, "topic", "lost", "data", strconv.Itoa(i)))
	}
	for i, ev := range c.Events(3, testutil.Wait) {
		if string(ev.Data) != strconv.Itoa(i) || ev.Seq != uint64(i+1) {
			t.Fatalf("event %d = data %s seq %d, want data %d seq %d (in order)", i, ev.Data, ev.Seq, i, i+1)
		}
		// It has the ID it got in the right partition (DESIGN.md: a new ID).
		if ev.ID == misrouted[i] || !streams.MustParseID(misrouted[i]).Less(streams.MustParseID(ev.ID)) {
			t.Fatalf("event %d has ID %s, added to the wrong partition as %s: want a new, later ID", i, ev.ID, misrouted[i])
		}
	}
	b.XAdd(t, "lost", "3") // then one added to the right partition: the sequence goes on
	if ev := c.Events(1, testutil.Wait)[0]; ev.Seq != 4 {
		t.Fatalf("event after the forwarded ones has seq %d, want 4", ev.Seq)
	}
	if got := b.historySeqs(t, "lost"); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Fatalf("history seqs = %v, want [1 2 3 4]", got)
	}
}

func TestDeadLetters(t *testing.T) {
	b := newTestBus(t, "--max-data", "100")
	c := wstest.Dial(t, b.node.url+"?topic=ok")
	c.Expect("subscribed", testutil.Wait)
	p := streams.Partition("ok", b.N)
	tests := []struct {
		name   string
		fields []any
		reason string
	}{
		{"missing topic", []any{"data", "x"}, "missing topic"},
		{"topic with a space", []any{"topic", "a b", "data", "x"}, "invalid topic"},
		{"empty topic", []any{"topic", "", "data", "x"}, "invalid topic"},
		{"missing data", []any{"topic", "ok"}, "missing data"},
		{"data over the limit", []any{"topic", "ok", "data", strings.Repeat("x", 101)}, "data too large"},
	}
	var ids []string
	for _, tt := range tests {
		ids = append(ids, b.XAddTo(t, p, tt.fields...))
	}
	good := b.XAdd(t, "ok", "fine")
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != good {
		t.Fatalf("event = %s, want %s: bad entries must not block the partition", ev.ID, good)
	}
	dead, err := b.Redis.XRange(context.Background(), b.Keys.Dead(p), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != len(tests) {
		t.Fatalf("dead-letter stream holds %d entries, want %d", len(dead), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if dead[i].Values["id"] != ids[i] || dead[i].Values["reason"] != tt.reason {
				t.Fatalf("dead entry = %v, want id %s reason %q", dead[i].Values, ids[i], tt.reason)
			}
		})
	}
	pending, err := b.Redis.XPending(context.Background(), b.Keys.Ingress(p), streams.Group).Result()
	if err != nil || pending.Count != 0 {
		t.Fatalf("pending = %+v, %v: want every entry acknowledged", pending, err)
	}
}

func TestBadClientMessages(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("dup", "", "")
	c.Expect("subscribed", testutil.Wait)
	tests := []struct {
		name, msg, code string
	}{
		{"not JSON", `hello`, "bad_request"},
		{"JSON without type", `{"topic":"a"}`, "bad_request"},
		{"JSON array", `[1,2]`, "bad_request"},
		{"unknown type", `{"type":"publish"}`, "unknown_type"},
		{"topic with a space", `{"type":"subscribe","topic":"a b"}`, "bad_topic"},
		{"empty topic", `{"type":"subscribe","topic":""}`, "bad_topic"},
		{"topic too long", `{"type":"subscribe","topic":"` + strings.Repeat("t", 257) + `"}`, "bad_topic"},
		{"bad since", `{"type":"subscribe","topic":"a","since":"yesterday"}`, "bad_since"},
		{"since of the wrong type", `{"type":"subscribe","topic":"a","since":5}`, "bad_request"},
		{"negative seq", `{"type":"subscribe","topic":"a","since":"1-1","seq":-1}`, "bad_seq"},
		{"fractional seq", `{"type":"subscribe","topic":"a","since":"1-1","seq":4.5}`, "bad_seq"},
		{"seq of the wrong type", `{"type":"subscribe","topic":"a","since":"1-1","seq":{"n":1}}`, "bad_seq"},
		{"seq too large", `{"type":"subscribe","topic":"a","since":"1-1","seq":18446744073709551616}`, "bad_seq"},
		{"subscribed twice", `{"type":"subscribe","topic":"dup"}`, "already_subscribed"},
		{"unsubscribe unknown", `{"type":"unsubscribe","topic":"nope"}`, "not_subscribed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.SendRaw([]byte(tt.msg))
			if m := c.Expect("error", testutil.Wait); m.Code != tt.code || m.Message == "" {
				t.Fatalf("error = %+v, want code %s with a message", m, tt.code)
			}
		})
	}
	// A member of the wrong type is named.
	c.SendRaw([]byte(`{"type":"ack","topic":"dup","id":5}`))
	if m := c.Expect("error", testutil.Wait); m.Code != "bad_request" || m.Message != "id must be a JSON string" {
		t.Fatalf("error = %+v, want bad_request naming id", m)
	}
	// The connection still works.
	c.Send(map[string]string{"type": "ping"})
	c.Expect("pong", testutil.Wait)
	id := b.XAdd(t, "dup", "still here")
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != id {
		t.Fatalf("event = %s, want %s", ev.ID, id)
	}
	c.Send(map[string]string{"type": "unsubscribe", "topic": "dup"})
	c.Expect("unsubscribed", testutil.Wait)
	b.XAdd(t, "dup", "not for us")
	c.ExpectQuiet(200 * time.Millisecond)
}

// TestPubSubLossLosesNothing kills the gateway's pub/sub connection while
// events are published: the gateway catches its topics up from history.
// On a single Redis the live channels of every partition share that one
// connection.
func TestPubSubLossLosesNothing(t *testing.T) {
	b := newTestBus(t)
	other := "other"
	for i := 0; streams.Partition(other, b.N) == streams.Partition("news", b.N); i++ {
		other = "other-" + strconv.Itoa(i)
	}
	topics := []string{"news", other}
	clients := make([]*wstest.Client, len(topics))
	ids := make([][]string, len(topics))
	for k, topic := range topics {
		clients[k] = wstest.Dial(t, b.node.url+"?topic="+topic)
		clients[k].Expect("subscribed", testutil.Wait)
		for i := range 10 {
			ids[k] = append(ids[k], b.XAdd(t, topic, strconv.Itoa(i)))
		}
		clients[k].Events(10, testutil.Wait)
	}
	killed, err := b.Redis.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result()
	if err != nil || killed != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v: want the gateway's one connection killed", killed, err)
	}
	for i := 10; i < 60; i++ {
		for k, topic := range topics {
			ids[k] = append(ids[k], b.XAdd(t, topic, strconv.Itoa(i)))
		}
	}
	for k, c := range clients {
		for i, ev := range c.Events(50, testutil.Wait) {
			if ev.ID != ids[k][10+i] {
				t.Fatalf("%s: event %d = %s, want %s", topics[k], 10+i, ev.ID, ids[k][10+i])
			}
		}
		c.ExpectQuiet(200 * time.Millisecond)
	}
}

// TestBusMetaWrittenBack: Redis loses everything under a serving node (a
// restart without persistence, here FLUSHALL). Within seconds the bus's
// meta is back, as it was, so `wsbus publish` finds the bus, and what it
// publishes reaches a subscriber.
func TestBusMetaWrittenBack(t *testing.T) {
	b := newTestBus(t)
	ctx := context.Background()
	if err := b.Redis.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * testutil.Wait)
	for {
		n, err := streams.Partitions(ctx, b.Redis, b.Keys)
		if err == nil && n == b.N {
			break
		}
		if err == nil || !errors.Is(err, streams.ErrNotMigrated) || time.Now().After(deadline) {
			t.Fatalf("partitions = %d, %v; want %d once the node writes the meta back", n, err, b.N)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, err := migrations.Version(ctx, b.Redis, b.Keys); err != nil || v != migrations.Latest() {
		t.Fatalf("schema = %d, %v; want %d", v, err, migrations.Latest())
	}
	// Until the partition's owner has recreated its epoch, a subscribe is
	// told unavailable, and retries, as a client does.
	c := wstest.Dial(t, b.node.url)
	for {
		c.Subscribe("after", "", "")
		m := c.Next(testutil.Wait)
		if m.Type == "subscribed" {
			break
		}
		if m.Code != "unavailable" || time.Now().After(deadline) {
			t.Fatalf("subscribe after the loss: %+v, want subscribed (or unavailable for a moment)", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var out, errs strings.Builder
	if err := runPublish([]string{"--redis", b.srv.URL(), "--prefix", b.prefix, "after", `{"n":1}`}, &out, &errs); err != nil {
		t.Fatalf("wsbus publish: %v (%s)", err, errs.String())
	}
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != strings.TrimSpace(out.String()) || string(ev.Data) != `{"n":1}` {
		t.Fatalf("event = %+v, want %s with {\"n\":1}", ev, out.String())
	}
}

// TestEpochRenewedUnderQuietSubscribers: Redis loses a partition's data
// (here its ingress stream, so the owner renews the epoch) while nothing
// is published. The partition's subscribers are closed with 4001 all the
// same, and a resume is told recovered:false under the new epoch.
func TestEpochRenewedUnderQuietSubscribers(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("quiet", "", "")
	sub := c.Expect("subscribed", testutil.Wait)
	id := b.XAdd(t, "quiet", `{"n":1}`)
	c.Events(1, testutil.Wait)
	if err := b.Redis.Del(context.Background(), b.Keys.Ingress(streams.Partition("quiet", b.N))).Err(); err != nil {
		t.Fatal(err)
	}
	if code := c.CloseCode(testutil.Wait); code != 4001 {
		t.Fatalf("closed with %d, want 4001", code)
	}
	again := wstest.Dial(t, b.node.url)
	again.Subscribe("quiet", id, sub.Epoch)
	if resumed := again.Expect("subscribed", testutil.Wait); resumed.Recovered || resumed.Epoch == sub.Epoch || resumed.Epoch == "" {
		t.Fatalf("resumed %+v under epoch %s: want recovered:false under a new epoch", resumed, sub.Epoch)
	}
}

// TestNoEpochIsUnavailable: a partition without an epoch (Redis lost its
// data, and its owner has not yet recreated it) is unavailable to a
// subscribe and to GET /v1/history, rather than answered with an empty
// epoch that would leave the client a cursor no later loss could be
// checked against; once the epoch is back, both are answered.
func TestNoEpochIsUnavailable(t *testing.T) {
	b := newTestBus(t)
	ctx := context.Background()
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("gone", "", "")
	c.Expect("subscribed", testutil.Wait)
	b.XAdd(t, "gone", "1")
	c.Events(1, testutil.Wait) // the partition's owner has checked it: it recreates nothing unasked now
	c.Send(map[string]string{"type": "unsubscribe", "topic": "gone"})
	c.Expect("unsubscribed", testutil.Wait)
	meta := b.Keys.PartitionMeta(streams.Partition("gone", b.N))
	epoch, err := b.Redis.HGet(ctx, meta, "epoch").Result()
	if err != nil {
		t.Fatal(err)
	}
	b.Redis.HDel(ctx, meta, "epoch")
	c.Subscribe("gone", "", "")
	if m := c.Expect("error", testutil.Wait); m.Code != "unavailable" {
		t.Fatalf("subscribe without an epoch: %+v, want unavailable", m)
	}
	history := "http://" + b.node.addr + "/v1/history?topic=gone"
	if code, body := httpJSON(t, "GET", history, ""); code != 503 {
		t.Fatalf("GET /v1/history without an epoch = %d %v, want 503", code, body)
	}
	b.Redis.HSet(ctx, meta, "epoch", epoch)
	c.Subscribe("gone", "", "")
	if sub := c.Expect("subscribed", testutil.Wait); sub.Epoch != epoch {
		t.Fatalf("subscribed %+v, want epoch %s", sub, epoch)
	}
	if code, body := httpJSON(t, "GET", history, ""); code != 200 || body["epoch"] != epoch {
		t.Fatalf("GET /v1/history = %d %v, want 200 with epoch %s", code, body, epoch)
	}
}

// TestOwnerRestartMidStream stops the only node while events are being
// published and starts another one: every event reaches history once and
// a resuming client gets each exactly once, in order.
func TestOwnerRestartMidStream(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	first := startNode(t, testConfig(t, srv, prefix, "--node-id", "first", "--lease-ttl", "1s"))
	b := &testBus{Bus: bustest.On(t, srv.Client(t), prefix), srv: srv, prefix: prefix}

	topics := []string{"t0", "t1", "t2", "t3"}
	published := make(map[string][]string)
	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			topic := topics[i%len(topics)]
			id := b.XAdd(t, topic, strconv.Itoa(i))
			mu.Lock()
			published[topic] = append(published[topic], id)
			mu.Unlock()
			time.Sleep(time.Millisecond) // paced, so that the owner change falls mid-stream
		}
	}()
	// publishedOf returns how many events of topic were published, and the
	// nth (the last when n is -1; "" when there is none).
	publishedOf := func(topic string, n int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		ids := published[topic]
		if n < 0 {
			n = len(ids) - 1
		}
		if n < 0 || n >= len(ids) {
			return len(ids), ""
		}
		return len(ids), ids[n]
	}
	// applied waits until the history of t0 holds its nth event.
	applied := func(by string, n int) {
		t.Helper()
		testutil.Eventually(t, testutil.Wait, func() error {
			_, id := publishedOf("t0", n)
			if id == "" || !slices.Contains(b.historyIDs(t, "t0"), id) {
				return fmt.Errorf("%s has not applied event %d of t0 yet", by, n)
			}
			return nil
		})
	}
	applied("the first node", 20)
	first.stop()
	// Events pile up with no owner.
	stopped, _ := publishedOf("t0", -1)
	testutil.Eventually(t, testutil.Wait, func() error {
		if n, _ := publishedOf("t0", -1); n < stopped+20 {
			return fmt.Errorf("%d events of t0 published since the first node stopped, want 20", n-stopped)
		}
		return nil
	})
	second := startNode(t, testConfig(t, srv, prefix, "--node-id", "second", "--lease-ttl", "1s"))
	started, _ := publishedOf("t0", -1)
	applied("the second node", started+20)
	close(stop)
	<-done

	for _, topic := range topics {
		want := published[topic]
		testutil.Eventually(t, 10*time.Second, func() error {
			if got := b.historyIDs(t, topic); !slices.Equal(got, want) {
				return fmt.Errorf("history of %s holds %d IDs, want the %d published, once each and in order", topic, len(got), len(want))
			}
			return nil
		})
		c := wstest.Dial(t, second.url+"?topic="+topic+"&since=0")
		c.Expect("subscribed", testutil.Wait)
		for i, ev := range c.Events(len(want), testutil.Wait) {
			if ev.ID != want[i] {
				t.Fatalf("%s event %d = %s, want %s", topic, i, ev.ID, want[i])
			}
		}
		c.ExpectQuiet(50 * time.Millisecond)
	}
}

func TestHTTPPublishAndHistory(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url+"?topic=web")
	c.Expect("subscribed", testutil.Wait)
	post := func(body string) (int, map[string]any) {
		return httpJSON(t, "POST", "http://"+b.node.addr+"/v1/publish", body)
	}
	status, res := post(`{"topic":"web","data":{"x":1}}`)
	if status != 200 || res["id"] == "" {
		t.Fatalf("publish = %d %v", status, res)
	}
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != res["id"] || string(ev.Data) != `{"x":1}` {
		t.Fatalf("event = %+v, want id %v data {\"x\":1}", ev, res["id"])
	}
	for _, tt := range []struct{ name, body string }{
		{"bad topic", `{"topic":"a b","data":1}`},
		{"no data", `{"topic":"web"}`},
		{"not JSON", `topic=web`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, res := post(tt.body); status != 400 || res["error"] == "" {
				t.Fatalf("publish %s = %d %v, want 400 with an error", tt.body, status, res)
			}
		})
	}
	status, hist := httpJSON(t, "GET", "http://"+b.node.addr+"/v1/history?topic=web&since=0", "")
	events, _ := hist["events"].([]any)
	if status != 200 || len(events) != 1 || hist["recovered"] != true {
		t.Fatalf("history = %d %v", status, hist)
	}
	if status, _ := httpJSON(t, "GET", "http://"+b.node.addr+"/v1/history?topic=web&since=x", ""); status != 400 {
		t.Fatalf("history with a bad since = %d, want 400", status)
	}
}

// TestHistoryPagesOfLargeEvents: large events are read in pages bounded
// in bytes: GET /v1/history ends a page at 1 MiB of event data, short of
// its limit, and says more. A WebSocket resume from the start gets every
// event once, in order; its pages (a quarter of --max-queue, four of these
// events) are counted in bus's TestResumePagesCutByBytes, not here.
func TestHistoryPagesOfLargeEvents(t *testing.T) {
	b := newTestBus(t)
	data := `"` + strings.Repeat("x", 60_000) + `"`
	var ids []string
	for range 20 {
		status, res := httpJSON(t, "POST", "http://"+b.node.addr+"/v1/publish", `{"topic":"big","data":`+data+`}`)
		if status != 200 {
			t.Fatalf("publish = %d %v", status, res)
		}
		ids = append(ids, res["id"].(string))
	}
	// The owner applies published events to the topic's history after
	// POST /v1/publish answers: a subscriber that got all 20 live or from
	// history shows they are there to be read in pages.
	c := wstest.Dial(t, b.node.url+"?topic=big&since=0")
	c.Expect("subscribed", testutil.Wait)
	for i, ev := range c.Events(len(ids), testutil.Wait) {
		if ev.ID != ids[i] {
			t.Fatalf("event %d = %s, want %s", i, ev.ID, ids[i])
		}
	}
	c.ExpectQuiet(50 * time.Millisecond)

	var got []string
	pages := []int{}
	for since, more := "0", true; more; {
		status, hist := httpJSON(t, "GET", "http://"+b.node.addr+"/v1/history?topic=big&limit=1000&since="+since, "")
		events, _ := hist["events"].([]any)
		if status != 200 || len(events) == 0 && hist["more"] == true {
			t.Fatalf("history since %s = %d, %d events, more %v", since, status, len(events), hist["more"])
		}
		for _, e := range events {
			since = e.(map[string]any)["id"].(string)
			got = append(got, since)
		}
		pages = append(pages, len(events))
		more = hist["more"] == true
	}
	// 1 MiB holds 17 events of 60,002 bytes.
	if !slices.Equal(got, ids) || !slices.Equal(pages, []int{17, 3}) {
		t.Fatalf("history read in pages of %v: %d IDs, want pages of [17 3] with the %d published in order", pages, len(got), len(ids))
	}
}

func httpJSON(tb testing.TB, method, url, body string) (int, map[string]any) {
	tb.Helper()
	req, _ := httpNewRequest(method, url, body)
	resp, err := httpClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// TestHTTPPublishErrors: a refused publish says what is wrong in the API's
// terms, with 413 for anything over a size limit.
func TestHTTPPublishErrors(t *testing.T) {
	b := newTestBus(t, "--max-data", "100")
	const topicRule = "topic must be 1-256 bytes of UTF-8 without spaces or control characters"
	const deadlineRule = "deadline must be a whole number of milliseconds from 1 to 2592000000"
	const notObject = `body must be a JSON object {"topic":..,"data":..,"deadline":ms?}`
	tests := []struct {
		name, body string
		status     int
		want       string // the whole error message
	}{
		{"bad topic", `{"topic":"a b","data":1}`, 400, topicRule},
		{"topic not a string", `{"topic":5,"data":1}`, 400, "topic must be a string"},
		{"no data", `{"topic":"web"}`, 400, "data is missing"},
		{"deadline a string", `{"topic":"web","data":1,"deadline":"abc"}`, 400, deadlineRule},
		{"deadline a fraction", `{"topic":"web","data":1,"deadline":1.5}`, 400, deadlineRule},
		{"deadline beyond int64", `{"topic":"web","data":1,"deadline":99999999999999999999}`, 400, deadlineRule},
		{"deadline zero", `{"topic":"web","data":1,"deadline":0}`, 400, deadlineRule},
		{"an array", `[1,2]`, 400, notObject},
		{"a string", `"web"`, 400, notObject},
		{"empty", ``, 400, notObject + ": the body is empty"},
		{"a second object after it", `{"topic":"web","data":1}{"x":2}`, 400, "body must be one JSON object, with nothing after it"},
		{"garbage after it", `{"topic":"web","data":1} ]`, 400, "body must be one JSON object, with nothing after it"},
		{"data not UTF-8", "{\"topic\":\"web\",\"data\":\"\xff\"}", 400, "data must be JSON, which is UTF-8"},
		{"trailing garbage past the size limit", `{"topic":"web","data":1}` + strings.Repeat(" ", 5000) + "x", 413,
			"body is larger than 4196 bytes: data may be at most 100 bytes"},
		{"data too large", `{"topic":"web","data":"` + strings.Repeat("x", 200) + `"}`, 413, "data is larger than 100 bytes"},
		{"body too large", `{"topic":"web","data":"` + strings.Repeat("x", 5000) + `"}`, 413,
			"body is larger than 4196 bytes: data may be at most 100 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, res := httpJSON(t, "POST", "http://"+b.node.addr+"/v1/publish", tt.body)
			if status != tt.status || res["error"] != tt.want {
				t.Fatalf("publish %.60s = %d %q, want %d %q", tt.body, status, res["error"], tt.status, tt.want)
			}
		})
	}
}
