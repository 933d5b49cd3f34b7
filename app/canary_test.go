package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// canaryMetric reads a metric of the node at addr by partition.
func canaryMetric(tb testing.TB, addr, name string) map[int]float64 {
	tb.Helper()
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[int]float64{}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{partition="(\d+)"\} (\S+)$`)
	for _, m := range re.FindAllSubmatch(body, -1) {
		p, _ := strconv.Atoi(string(m[1]))
		out[p], _ = strconv.ParseFloat(string(m[2]), 64)
	}
	return out
}

func sumOf(m map[int]float64) (sum float64) {
	for _, v := range m {
		sum += v
	}
	return sum
}

// everyPartition fails unless m has a value for each of n partitions that
// ok accepts.
func everyPartition(m map[int]float64, n int, what string, ok func(float64) bool) error {
	if len(m) != n {
		return fmt.Errorf("%s has %d partitions, want %d", what, len(m), n)
	}
	for p, v := range m {
		if !ok(v) {
			return fmt.Errorf("%s{partition=%q} = %v", what, strconv.Itoa(p), v)
		}
	}
	return nil
}

func TestCanaryTopicsHashToEveryPartition(t *testing.T) {
	for _, n := range []int{1, 2, 7, 64, 256} {
		topics := canaryTopics(n)
		for p, topic := range topics {
			if !strings.HasPrefix(topic, "$canary.") || streams.Partition(topic, n) != p {
				t.Fatalf("n=%d: partition %d has canary topic %q of partition %d", n, p, topic, streams.Partition(topic, n))
			}
		}
	}
	if got := canaryTopics(64)[streams.Partition("$canary.0", 64)]; got != "$canary.0" {
		t.Fatalf("$canary.0's partition has %q, want the first name that hashes to it", got)
	}
}

// TestCanaryReceivesEveryPartition: a node's canary reads its events back
// from every partition through its own WebSocket path, with nothing lost,
// on as many connections as --max-subscriptions makes it take, and they
// are not counted as clients'.
func TestCanaryReceivesEveryPartition(t *testing.T) {
	const n = 16
	b := newTestBus(t, "--partitions", strconv.Itoa(n), "--canary-interval", "200ms", "--max-subscriptions", "6")
	testutil.Eventually(t, 20*time.Second, func() error {
		return everyPartition(canaryMetric(t, b.node.addr, "wsbus_canary_received_total"), n, "wsbus_canary_received_total",
			func(v float64) bool { return v >= 3 })
	})
	for _, name := range []string{"wsbus_canary_lost_total", "wsbus_canary_late_total"} {
		if err := everyPartition(canaryMetric(t, b.node.addr, name), n, name, func(v float64) bool { return v == 0 }); err != nil {
			t.Fatal(err)
		}
	}
	if got := gatewayMetric(t, b, "wsbus_canary_latency_seconds_count"); got < 3*n {
		t.Fatalf("wsbus_canary_latency_seconds_count = %d, want at least %d", got, 3*n)
	}
	if got := gatewayMetric(t, b, "wsbus_ws_upgrades_total"); got < 3 {
		t.Fatalf("wsbus_ws_upgrades_total = %d, want the canary's 3 connections at least (16 topics, 6 each)", got)
	}
	if got := gatewayMetric(t, b, "wsbus_ws_connections"); got != 0 {
		t.Fatalf("wsbus_ws_connections = %d with only the canary's three connected, want 0", got)
	}
	if got := gatewayMetric(t, b, "wsbus_gateway_subscriptions"); got != n {
		t.Fatalf("wsbus_gateway_subscriptions = %d, want the canary's %d", got, n)
	}
	// The status page shows the canary's view of each partition.
	code, _, body := getStatus(t, b.node, "/status.json", nil)
	var st statusAnswer
	if err := json.Unmarshal(body, &st); code != http.StatusOK || err != nil || len(st.Partition) != n {
		t.Fatalf("/status.json: %d %v, %d partitions: %s", code, err, len(st.Partition), body)
	}
	for _, p := range st.Partition {
		if cn := p.Canary; cn == nil || cn.Lost == nil || *cn.Lost != 0 || cn.Last == nil || cn.Last.IsZero() || cn.LatencyMS == nil {
			t.Fatalf("/status.json: partition %d has canary %+v, want an arrival and nothing lost", p.P, cn)
		}
	}
	if conns := *st.Nodes[0].Connections; conns != 0 {
		t.Fatalf("/status.json: %d connections with only the canary connected, want 0", conns)
	}
}

// TestCanaryReportsAStalledPartition stops one partition's pipeline from
// outside and sees the canary report that partition's losses within 10 s,
// and no other partition's. The pipeline is stopped by two poisoned keys:
// the partition's canary topic history is a string, so its events must be
// dead-lettered, and the dead-letter stream is a string too, so the
// owner's apply refuses the batch (WSBUSKEY) and tries again and again:
// nothing of the partition is applied any more while its lease holds.
func TestCanaryReportsAStalledPartition(t *testing.T) {
	const n, stalled = 16, 5
	b := newTestBus(t, "--partitions", strconv.Itoa(n), "--canary-interval", "200ms", "--canary-timeout", "3s")
	testutil.Eventually(t, 20*time.Second, func() error {
		return everyPartition(canaryMetric(t, b.node.addr, "wsbus_canary_received_total"), n, "wsbus_canary_received_total",
			func(v float64) bool { return v > 0 })
	})
	ctx := context.Background()
	topic := canaryTopics(n)[stalled]
	for _, key := range []string{b.Keys.Dead(stalled), b.Keys.Topic(stalled, topic)} {
		if err := b.Redis.Set(ctx, key, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error {
		if lost := canaryMetric(t, b.node.addr, "wsbus_canary_lost_total"); lost[stalled] == 0 {
			return fmt.Errorf("partition %d lost nothing yet", stalled)
		}
		return nil
	})
	t.Logf("partition %d's losses reported %v after its pipeline was stopped", stalled, time.Since(start).Round(time.Millisecond))
	lost := canaryMetric(t, b.node.addr, "wsbus_canary_lost_total")
	for p, v := range lost {
		if p != stalled && v != 0 {
			t.Errorf("partition %d lost %v canary events, want 0: only %d is stopped", p, v, stalled)
		}
	}
	// The pipeline is stopped indeed: the canary's events wait in its
	// ingress, unapplied.
	testutil.Eventually(t, 5*time.Second, func() error {
		if lag := canaryMetric(t, b.node.addr, "wsbus_bus_ingress_lag"); lag[stalled] == 0 {
			return fmt.Errorf("partition %d has no ingress lag", stalled)
		}
		return nil
	})
}

// TestCanaryTopicsRefused: a client may not subscribe to a canary topic,
// by message or URL, whatever its token allows, nor publish to one or read
// one over HTTP.
func TestCanaryTopicsRefused(t *testing.T) {
	b := newTestBus(t)
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("$canary.0", "", "")
	if m := c.Next(testutil.Wait); m.Type != "error" || m.Code != "forbidden" || m.Topic != "$canary.0" {
		t.Fatalf("subscribe $canary.0 = %+v, want forbidden", m)
	}
	q := wstest.Dial(t, b.node.url+"?topic=$canary.3")
	if m := q.Next(testutil.Wait); m.Code != "forbidden" {
		t.Fatalf("?topic=$canary.3 = %+v, want forbidden", m)
	}
	secured := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus", "--publish-key", "pk")
	s, err := wstest.DialHeader(secured.node.url, bearer(hs(t, claims("u1", time.Hour, "*"))))
	if err != nil {
		t.Fatal(err)
	}
	s.Attach(t).Subscribe("$canary.1", "", "")
	if m := s.Next(testutil.Wait); m.Code != "forbidden" {
		t.Fatalf("subscribe $canary.1 with a token for every topic = %+v, want forbidden", m)
	}

	tests := []struct {
		name, method, path, body string
		header                   http.Header
	}{
		{"publish", "POST", "/v1/publish", `{"topic":"$canary.0","data":{"node":"x"}}`, http.Header{"Authorization": {"Bearer pk"}}},
		{"history", "GET", "/v1/history?topic=$canary.0", "", bearer(hs(t, claims("u1", time.Hour, "*")))},
		{"unread", "GET", "/v1/unread?topic=$canary.0&sub=u1", "", http.Header{"Authorization": {"Bearer pk"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := httpNewRequest(tt.method, "http://"+secured.node.addr+tt.path, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = tt.header
			resp, err := httpClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("%s %s = %d %s, want 403", tt.method, tt.path, resp.StatusCode, body)
			}
		})
	}
	if n, err := secured.Redis.XLen(context.Background(), secured.Keys.Ingress(streams.Partition("$canary.0", secured.N))).Result(); err != nil || n != 0 {
		t.Fatalf("partition of $canary.0 has %d ingress entries (%v), want none", n, err)
	}
}

// TestCanaryWrongKeyRefused: a handshake presenting a canary key that is
// not the node's is refused with 401, on an insecure node too, and a
// client that presents none is no canary.
func TestCanaryWrongKeyRefused(t *testing.T) {
	b := newTestBus(t, "--canary-interval", "1s")
	for _, key := range []string{"wrong", strings.Repeat("0", 64), ""} {
		if got := dialStatus(t, b.node.url, http.Header{"Authorization": {"Wsbus-Canary " + key}}); got != http.StatusUnauthorized {
			t.Fatalf("canary key %q: handshake answered %d, want 401", key, got)
		}
	}
	c := wstest.Dial(t, b.node.url)
	c.Subscribe("$canary.0", "", "")
	if m := c.Next(testutil.Wait); m.Code != "forbidden" {
		t.Fatalf("subscribe $canary.0 without the key = %+v, want forbidden", m)
	}
}

// TestCanaryCounts drives a canary's bookkeeping by hand: an event that
// arrives is not lost, nor one that arrives before its publish returned;
// one overtaken by a later event is, unless a hole just reported covers
// it; one overdue is lost, and late too if it arrives after all; while a
// partition's subscription is not in effect its events' clocks stop.
func TestCanaryCounts(t *testing.T) {
	var next string // the ID Publish returns
	c := newCanary(canaryConfig{
		Interval: time.Second, Timeout: time.Second, Node: "n1", Partitions: 2, MaxSubscriptions: 1,
		Logger: slog.New(slog.DiscardHandler),
		Owned:  func() []int { return []int{0} },
		Publish: func(context.Context, string, []byte) (string, error) {
			return next, nil
		},
	})
	topic := c.topics[0]
	mine := []byte(`{"node":"n1"}`)
	publish := func(ids ...string) {
		for _, id := range ids {
			next = id
			c.publish(context.Background())
		}
	}
	arrive := func(id string) { c.event(wsbus.Event{Topic: topic, ID: id, Data: mine}) }
	check := func(step string, lost, late float64) {
		t.Helper()
		if got := promtest.ToFloat64(c.lostBy[0]); got != lost {
			t.Fatalf("%s: lost %v, want %v", step, got, lost)
		}
		if got := promtest.ToFloat64(c.lateBy[0]); got != late {
			t.Fatalf("%s: late %v, want %v", step, got, late)
		}
	}
	soon := func() time.Time { return time.Now().Add(500 * time.Millisecond) }
	overdue := func() time.Time { return time.Now().Add(2 * time.Second) }

	publish("1-0")
	if len(c.pending[0]) != 0 {
		t.Fatal("published to a partition whose subscription is not in effect")
	}
	open := false
	c.state([]int{0}, &open, wsbus.Open, nil)
	c.subscribed(wsbus.Subscribed{Topic: topic})
	publish("1000-0")
	arrive("1000-0")
	c.expire(overdue())
	check("arrived", 0, 0)

	arrive("2000-0")
	publish("2000-0")
	c.expire(overdue())
	check("arrived before its publish returned", 0, 0)

	publish("3000-0", "4000-0")
	arrive("4000-0")
	check("overtaken", 1, 0)

	publish("5000-0", "6000-0", "7000-0")
	c.gap(wsbus.Gap{Topic: topic, After: 10, Seq: 13})
	check("a hole of two", 3, 0)
	arrive("7000-0")
	check("overtaken within the hole", 3, 0)

	publish("8000-0")
	c.expire(soon())
	check("not yet overdue", 3, 0)
	c.expire(overdue())
	check("overdue", 4, 0)
	arrive("8000-0")
	check("late", 4, 1)

	publish("9000-0")
	c.state([]int{0}, &open, wsbus.Closed, io.EOF)
	if got := c.connections(); got != 0 {
		t.Fatalf("%d connections after Closed", got)
	}
	publish("9500-0")
	c.expire(overdue())
	check("clock stopped", 4, 1)
	c.state([]int{0}, &open, wsbus.Open, nil)
	c.subscribed(wsbus.Subscribed{Topic: topic})
	c.expire(soon())
	check("clock restarted", 4, 1)
	arrive("9000-0")
	c.expire(overdue())
	check("resumed", 4, 1)

	publish("9900-0")
	c.mu.Lock()
	c.pending[0][0].at = time.Now().Add(-2 * time.Second) // sent longer than the timeout ago,
	c.since[0] = c.pending[0][0].at                       // on a subscription in effect since
	c.mu.Unlock()
	arrive("9900-0") // before expire looked
	check("past its timeout when it came", 5, 2)
	if got := promtest.ToFloat64(c.receivedBy[0]); got != 7 {
		t.Fatalf("received %v, want 7", got)
	}
}
