package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// TestSlowReaderLags (--slow-consumer lag, the default) subscribes a
// client that stops reading while 16 MiB is published to its topic: it is
// not disconnected, the gateway's memory stays within a few queues, and
// once it reads again it gets every event once, in order, caught up from
// history, then live events.
func TestSlowReaderLags(t *testing.T) {
	const events, size = 4096, 4 << 10 // 16 MiB
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, "--history-len", "10000")
	pub := newPublisher(t, srv, prefix)

	c := wstest.Dial(t, g.url+"?topic=flood")
	if err := c.SetReadBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	c.Expect("subscribed", testutil.Wait)
	peak := watchRSS(t, g.pid())

	// Stop reading; publish more than the kernel's socket buffers on both
	// sides and the 1 MiB queue hold.
	ids := pub.xaddMany(t, "flood", strings.Repeat("x", size), events)
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := metric(t, g, "wsbus_gateway_lag_catchups_total"); n < 1 {
			return fmt.Errorf("the client has not fallen behind yet (lag catch-ups %d)", n)
		}
		return nil
	})

	// Read again: every event once, in order, on the same connection.
	var got []string
	for len(got) < len(ids) {
		m, err := c.TryNext(testutil.Wait)
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(got), len(ids), err)
		}
		if m.Type != "event" {
			t.Fatalf("after %d events got %+v, want events", len(got), m)
		}
		got = append(got, m.ID)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("the lagging client got %d events, not the %d published once each in order", len(got), len(ids))
	}
	for i := range 3 {
		id := pub.XAdd(t, "flood", strconv.Itoa(i))
		if m := c.Events(1, testutil.Wait)[0]; m.ID != id {
			t.Fatalf("live event %s, want %s", m.ID, id)
		}
	}
	rssBefore, rssPeak := peak()
	t.Logf("gateway RSS %d KiB before, peak %d KiB (+%d KiB) while 16 MiB went to a client that stalled, then caught up; lag catch-ups %d, 4001 closes %d",
		rssBefore>>10, rssPeak>>10, (rssPeak-rssBefore)>>10,
		metric(t, g, "wsbus_gateway_lag_catchups_total"), metric(t, g, "wsbus_ws_slow_consumers_total"))
	if rssPeak-rssBefore >= 48<<20 {
		t.Errorf("gateway RSS grew by %d MiB for one lagging client, want under 48 MiB", (rssPeak-rssBefore)>>20)
	}
	if n := metric(t, g, "wsbus_ws_slow_consumers_total"); n != 0 {
		t.Errorf("%d clients closed with 4001, want none", n)
	}
}

// TestLaggingPastHistoryIsClosed: a lagging client whose history is
// trimmed past it (--history-len 100) is closed with 4001 after the events
// that could be sent, in order, and its resume from the last one it got
// is answered recovered:false.
func TestLaggingPastHistoryIsClosed(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, "--history-len", "100", "--max-queue", "65536")
	pub := newPublisher(t, srv, prefix)

	c := wstest.Dial(t, g.url+"?topic=short")
	if err := c.SetReadBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	epoch := c.Expect("subscribed", testutil.Wait).Epoch
	ids := pub.xaddMany(t, "short", strings.Repeat("y", 4<<10), 3000) // 12 MiB
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := metric(t, g, "wsbus_gateway_lag_catchups_total"); n < 1 {
			return fmt.Errorf("the client has not fallen behind yet (lag catch-ups %d)", n)
		}
		return nil
	})

	var got []string
	code := 0
	for code == 0 {
		m, err := c.TryNext(testutil.Wait)
		var closed wsutil.ClosedError
		switch {
		case errors.As(err, &closed):
			code = int(closed.Code)
		case err != nil:
			t.Fatalf("after %d events: %v", len(got), err)
		case m.Type == "event":
			got = append(got, m.ID)
		}
	}
	if code != 4001 {
		t.Fatalf("closed with %d, want 4001", code)
	}
	if len(got) == 0 || len(got) >= len(ids) {
		t.Fatalf("got %d of %d events before the close", len(got), len(ids))
	}
	if !slices.Equal(got, ids[:len(got)]) {
		t.Fatalf("the %d events before the close are not the first ones published, once each in order", len(got))
	}

	last := got[len(got)-1]
	key := pub.Keys.Topic(streams.Partition("short", pub.N), "short")
	var first []redis.XMessage
	testutil.Eventually(t, testutil.Wait, func() error {
		first = pub.Redis.XRangeN(context.Background(), key, "-", "+", 1).Val()
		if info := pub.Redis.XInfoStream(context.Background(), key).Val(); info == nil || info.EntriesAdded != int64(len(ids)) {
			return fmt.Errorf("history has not taken all %d events yet", len(ids))
		}
		return nil
	})
	firstSeq, _ := strconv.Atoi(first[0].Values["seq"].(string))
	r := wstest.Dial(t, g.url)
	r.Send(map[string]any{"type": "subscribe", "topic": "short", "since": last, "seq": len(got), "epoch": epoch})
	sub := r.Expect("subscribed", testutil.Wait)
	if want := uint64(firstSeq - len(got) - 1); sub.Recovered || sub.Missed == nil || *sub.Missed != want {
		t.Fatalf("resume from %s (seq %d) after history was trimmed past it: %+v, want recovered:false with missed %d", last, len(got), sub, want)
	}
	if ev := r.Next(testutil.Wait); ev.Type != "event" || ev.ID != first[0].ID || ev.Seq != uint64(firstSeq) {
		t.Fatalf("first event after the resume = %+v, want %s seq %d", ev, first[0].ID, firstSeq)
	}
	t.Logf("closed with 4001 after %d of %d events; resume from %s answered recovered:false, missed %d", len(got), len(ids), last, *sub.Missed)
}

// xaddMany publishes n events of topic with data, pipelined (the client
// under test must not stall for long: a socket that takes nothing for the
// write timeout, 10 s, is cut), and returns their IDs in order.
func (p *publisher) xaddMany(tb testing.TB, topic, data string, n int) []string {
	tb.Helper()
	ctx := context.Background()
	stream := p.Keys.Ingress(streams.Partition(topic, p.N))
	ids := make([]string, 0, n)
	for len(ids) < n {
		pipe := p.Redis.Pipeline()
		var cmds []*redis.StringCmd
		for range min(256, n-len(ids)) {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"topic", topic, "data", data}}))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			tb.Fatalf("XADD: %v", err)
		}
		for _, cmd := range cmds {
			ids = append(ids, cmd.Val())
		}
	}
	return ids
}

// watchRSS samples a process's resident set size until the test ends or
// the returned function is called, which gives the first sample and the
// largest.
func watchRSS(tb testing.TB, pid int) func() (first, peak int) {
	tb.Helper()
	first := rss(tb, pid)
	var mu sync.Mutex
	peak := first
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			n := rssOf(pid)
			mu.Lock()
			peak = max(peak, n)
			mu.Unlock()
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { close(done); <-stopped }) }
	tb.Cleanup(stop)
	return func() (int, int) {
		stop()
		mu.Lock()
		defer mu.Unlock()
		return first, peak
	}
}

// rssOf is rss without a test to fail: 0 when the process is gone.
func rssOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kb << 10
		}
	}
	return 0
}

// metric reads one counter or gauge without labels from /metrics.
func metric(tb testing.TB, g *gateway, name string) int {
	tb.Helper()
	body, err := get("http://" + g.addr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		tb.Fatalf("no %s in /metrics", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		tb.Fatalf("%s = %q: %v", name, m[1], err)
	}
	return int(v)
}
