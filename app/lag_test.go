package app

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// TestLaggingClientKeepsEveryTopic (--slow-consumer lag): a client of two
// topics stops reading and sends a ping while events of both pour in past
// its queue, then reads while more are published. It gets its pong, and
// on each topic every event once and in order, with no reconnect.
func TestLaggingClientKeepsEveryTopic(t *testing.T) {
	b := newTestBus(t, "--max-queue", "65536", "--history-len", "20000")
	c := wstest.Dial(t, b.node.url)
	if err := c.SetReadBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	topics := []string{"lag:a", "lag:b"}
	for _, topic := range topics {
		c.Subscribe(topic, "", "")
		c.Expect("subscribed", testutil.Wait)
	}
	payload := strings.Repeat("z", 4<<10)
	published := map[string][]string{}
	for i := range 1500 { // 6 MiB, more than the socket buffers hold
		topic := topics[i%2]
		published[topic] = append(published[topic], b.XAdd(t, topic, payload))
		if i == 1000 {
			c.Send(map[string]string{"type": "ping"})
		}
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := gatewayMetric(t, b, "wsbus_gateway_lag_catchups_total"); n < 1 {
			return fmt.Errorf("no lag catch-up yet")
		}
		return nil
	})

	// More events while the client catches up: the hand-over to live.
	more := make(chan map[string][]string, 1)
	go func() {
		ids := map[string][]string{}
		for i := range 400 {
			topic := topics[i%2]
			id, err := b.Add(context.Background(), topic, strconv.Itoa(i))
			if err == nil {
				ids[topic] = append(ids[topic], id)
			}
		}
		more <- ids
	}()
	got := map[string][]string{}
	pongs, total := 0, 0
	for want := 1500 + 400; total < want || pongs == 0; {
		m := c.Next(testutil.Wait)
		switch m.Type {
		case "event":
			got[m.Topic] = append(got[m.Topic], m.ID)
			total++
		case "pong":
			pongs++
		default:
			t.Fatalf("got %+v while catching up", m)
		}
	}
	for topic, ids := range <-more {
		published[topic] = append(published[topic], ids...)
	}
	for _, topic := range topics {
		if !slices.Equal(got[topic], published[topic]) {
			t.Fatalf("%s: got %d events, want the %d published, once each in order", topic, len(got[topic]), len(published[topic]))
		}
	}
	if pongs != 1 {
		t.Fatalf("%d pongs, want 1", pongs)
	}
	c.ExpectQuiet(200 * time.Millisecond)
	if n := gatewayMetric(t, b, "wsbus_ws_slow_consumers_total"); n != 0 {
		t.Fatalf("%d clients closed with 4001, want none", n)
	}
}

// TestLaggingClientInBursts: a client of three topics reads in bursts
// with pauses while all three are published to at full speed, so its
// small queue overflows again and again, sometimes while it is being
// caught up. Each topic still arrives whole: every event once, in order.
func TestLaggingClientInBursts(t *testing.T) {
	b := newTestBus(t, "--max-queue", "32768", "--history-len", "20000")
	c := wstest.Dial(t, b.node.url)
	if err := c.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	topics := []string{"burst:a", "burst:b", "burst:c"}
	for _, topic := range topics {
		c.Subscribe(topic, "", "")
		c.Expect("subscribed", testutil.Wait)
	}
	const perTopic = 1000
	published := make(chan map[string][]string, 1)
	var sent atomic.Int64 // events published so far
	go func() {
		ids := map[string][]string{}
		payload := strings.Repeat("w", 4<<10) // 12 MiB in all
		ctx := context.Background()
		for i := 0; i < perTopic*len(topics); i += 30 {
			pipe := b.Redis.Pipeline()
			cmds := map[string][]*redis.StringCmd{}
			for j := i; j < i+30; j++ {
				topic := topics[j%len(topics)]
				cmds[topic] = append(cmds[topic], pipe.XAdd(ctx, &redis.XAddArgs{
					Stream: b.Keys.Ingress(streams.Partition(topic, b.N)),
					Values: []any{"topic", topic, "data", payload},
				}))
			}
			_, _ = pipe.Exec(ctx)
			sent.Add(30)
			time.Sleep(20 * time.Millisecond) // paced: about 6 MiB/s for 2 s, the load under test
			for topic, cs := range cmds {
				for _, cmd := range cs {
					ids[topic] = append(ids[topic], cmd.Val())
				}
			}
		}
		published <- ids
	}()
	got := map[string][]string{}
	for n := 0; n < perTopic*len(topics); n++ {
		if n%300 == 0 {
			// The slow reader under test: it stops reading until the
			// publisher is 1500 events (6 MiB) ahead of it, whatever
			// the machine's speed: more than the gateway's socket can
			// buffer (Linux grows a send buffer to 4 MiB), so a client
			// that was keeping up overflows its queue again.
			ahead := int64(min(n+1500, perTopic*len(topics)))
			testutil.Eventually(t, testutil.Wait, func() error {
				if s := sent.Load(); s < ahead {
					return fmt.Errorf("%d events published, waiting for %d", s, ahead)
				}
				return nil
			})
		}
		m := c.Next(testutil.Wait)
		if m.Type != "event" {
			t.Fatalf("got %+v, want events", m)
		}
		got[m.Topic] = append(got[m.Topic], m.ID)
	}
	want := <-published
	for _, topic := range topics {
		if !slices.Equal(got[topic], want[topic]) {
			t.Fatalf("%s: got %d events, want the %d published, once each in order", topic, len(got[topic]), len(want[topic]))
		}
	}
	c.ExpectQuiet(200 * time.Millisecond)
	lags := gatewayMetric(t, b, "wsbus_gateway_lag_catchups_total")
	t.Logf("the client fell behind %d times", lags)
	// Once at least, for sure; several on a machine that keeps the
	// publisher ahead (3 here when idle; 1 seen under CI's load, which the
	// test must not fail on: every event still came once, in order).
	if lags < 1 {
		t.Fatalf("the client fell behind %d times, want at least once", lags)
	}
	if n := gatewayMetric(t, b, "wsbus_ws_slow_consumers_total"); n != 0 {
		t.Fatalf("%d clients closed with 4001, want none", n)
	}
}

// gatewayMetric reads one unlabelled metric of the test bus's node.
func gatewayMetric(tb testing.TB, b *testBus, name string) int {
	tb.Helper()
	resp, err := httpClient.Get("http://" + b.node.addr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		tb.Fatalf("no %s in /metrics", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return int(v)
}

// TestLaggingClientUnsubscribes: a client unsubscribes from a topic while
// it is being caught up from history, then subscribes to it again from
// "0". Nothing of the topic follows "unsubscribed" until the new
// "subscribed", and after it the topic's events come once each, in order,
// from the first. Six rounds: the unsubscribe must meet the catch-up
// while it waits for room, which it does often, not always.
func TestLaggingClientUnsubscribes(t *testing.T) {
	b := newTestBus(t, "--max-queue", "65536", "--history-len", "20000")
	for round := range 6 {
		unsubscribeWhileLagging(t, b, fmt.Sprintf("lag:unsub:%d", round))
	}
}

func unsubscribeWhileLagging(t *testing.T, b *testBus, topic string) {
	c := wstest.Dial(t, b.node.url)
	if err := c.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	c.Subscribe(topic, "", "")
	c.Expect("subscribed", testutil.Wait)
	lags := gatewayMetric(t, b, "wsbus_gateway_lag_catchups_total")
	payload := strings.Repeat("u", 4<<10)
	var ids []string
	for len(ids) < 1500 { // 6 MiB, far more than the socket buffers and the queue
		pipe := b.Redis.Pipeline()
		var cmds []*redis.StringCmd
		for range 250 {
			cmds = append(cmds, pipe.XAdd(context.Background(), &redis.XAddArgs{
				Stream: b.Keys.Ingress(streams.Partition(topic, b.N)),
				Values: []any{"topic", topic, "data", payload},
			}))
		}
		if _, err := pipe.Exec(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range cmds {
			ids = append(ids, cmd.Val())
		}
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := gatewayMetric(t, b, "wsbus_gateway_lag_catchups_total"); n <= lags {
			return fmt.Errorf("no lag catch-up yet")
		}
		return nil
	})
	c.Send(map[string]string{"type": "unsubscribe", "topic": topic})
	c.Send(map[string]string{"type": "subscribe", "topic": topic, "since": "0"})

	var before, after []string // events before "unsubscribed", after the new "subscribed"
	state := 0                 // 0: first subscription, 1: unsubscribed, 2: subscribed again
	for len(after) < len(ids) {
		m := c.Next(testutil.Wait)
		switch {
		case m.Type == "unsubscribed" && state == 0:
			state = 1
		case m.Type == "subscribed" && state == 1:
			state = 2
		case m.Type == "event" && state == 0:
			before = append(before, m.ID)
		case m.Type == "event" && state == 2:
			after = append(after, m.ID)
		default:
			t.Fatalf("%s: %s %s in state %d (%d events before unsubscribing, %d after subscribing again)",
				topic, m.Type, m.ID, state, len(before), len(after))
		}
	}
	if !slices.Equal(before, ids[:len(before)]) {
		t.Fatalf("%s: the %d events before unsubscribing are not the first ones, once each in order", topic, len(before))
	}
	if !slices.Equal(after, ids) {
		i := 0
		for i < len(after) && after[i] == ids[i] {
			i++
		}
		t.Fatalf("%s: after subscribing again from 0, event %d is %s, want %s", topic, i, after[i], ids[i])
	}
	_ = c.Conn.Close()
}
