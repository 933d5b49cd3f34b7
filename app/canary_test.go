package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
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
// and its connection is not counted as a client's.
func TestCanaryReceivesEveryPartition(t *testing.T) {
	const n = 16
	b := newTestBus(t, "--partitions", strconv.Itoa(n), "--canary-interval", "200ms")
	redistest.Eventually(t, 20*time.Second, func() error {
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
	if got := gatewayMetric(t, b, "wsbus_ws_connections"); got != 0 {
		t.Fatalf("wsbus_ws_connections = %d with only the canary connected, want 0", got)
	}
}

// TestCanaryReportsAStalledPartition stops one partition's pipeline from
// outside and sees the canary report that partition's losses within 10 s,
// and no other partition's. The pipeline is stopped by two poisoned keys:
// the partition's canary topic history is a string, so the owner's apply
// of its next canary event fails; after a failure the pipeline checks the
// partition before it reads on, and with the partition's meta a string
// too, that check fails again and again: nothing of the partition is
// applied any more while its lease holds.
func TestCanaryReportsAStalledPartition(t *testing.T) {
	const n, stalled = 16, 5
	b := newTestBus(t, "--partitions", strconv.Itoa(n), "--canary-interval", "200ms", "--canary-timeout", "3s")
	redistest.Eventually(t, 20*time.Second, func() error {
		return everyPartition(canaryMetric(t, b.node.addr, "wsbus_canary_received_total"), n, "wsbus_canary_received_total",
			func(v float64) bool { return v > 0 })
	})
	ctx := context.Background()
	topic := canaryTopics(n)[stalled]
	for _, key := range []string{b.keys.PartitionMeta(stalled), b.keys.Topic(stalled, topic)} {
		if err := b.rdb.Set(ctx, key, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	redistest.Eventually(t, 10*time.Second, func() error {
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
	redistest.Eventually(t, 5*time.Second, func() error {
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
	if m := c.Next(wait); m.Type != "error" || m.Code != "forbidden" || m.Topic != "$canary.0" {
		t.Fatalf("subscribe $canary.0 = %+v, want forbidden", m)
	}
	q := wstest.Dial(t, b.node.url+"?topic=$canary.3")
	if m := q.Next(wait); m.Code != "forbidden" {
		t.Fatalf("?topic=$canary.3 = %+v, want forbidden", m)
	}
	secured := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus", "--publish-key", "pk")
	s, err := wstest.DialHeader(secured.node.url, bearer(hs(t, claims("u1", time.Hour, "*"))))
	if err != nil {
		t.Fatal(err)
	}
	s.Attach(t).Subscribe("$canary.1", "", "")
	if m := s.Next(wait); m.Code != "forbidden" {
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
	if n, err := secured.rdb.XLen(context.Background(), secured.keys.Ingress(streams.Partition("$canary.0", secured.n))).Result(); err != nil || n != 0 {
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
	if m := c.Next(wait); m.Code != "forbidden" {
		t.Fatalf("subscribe $canary.0 without the key = %+v, want forbidden", m)
	}
}
