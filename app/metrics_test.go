package app

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
)

// TestDeliveryLatencyOncePerEvent publishes three events to a topic two
// clients read on one node: wsbus_delivery_latency_seconds has three
// observations, one per event and gateway, not one per socket, while the
// canary's events, delivered meanwhile, count in none; and each applied
// batch is timed in wsbus_bus_apply_seconds.
func TestDeliveryLatencyOncePerEvent(t *testing.T) {
	b := newTestBus(t, "--canary-interval", "50ms")
	var clients []*wstest.Client
	for range 2 {
		c := wstest.Dial(t, b.node.url+"?topic=lat")
		c.Expect("subscribed", testutil.Wait)
		clients = append(clients, c)
	}
	before := gatewayMetric(t, b, "wsbus_delivery_latency_seconds_count")
	for _, data := range []string{"1", "2", "3"} {
		b.XAdd(t, "lat", data)
	}
	for _, c := range clients {
		c.Events(3, testutil.Wait)
	}
	received := func() (n float64) {
		for _, v := range canaryMetric(t, b.node.addr, "wsbus_canary_received_total") {
			n += v
		}
		return n
	}
	canaries := received()
	testutil.Eventually(t, testutil.Wait, func() error {
		if received() <= canaries {
			return fmt.Errorf("no canary event delivered since the events")
		}
		return nil
	})
	if n := gatewayMetric(t, b, "wsbus_delivery_latency_seconds_count") - before; n != 3 {
		t.Errorf("%d latency observations for 3 events read by 2 clients, want 3", n)
	}
	if n := gatewayMetric(t, b, "wsbus_bus_apply_seconds_count"); n < 1 {
		t.Errorf("%d applied batches timed after 3 events", n)
	}
	// A healthy node, started on a new bus, with subscribes to topics
	// without history: nothing of it is a Redis failure.
	empty := wstest.Dial(t, b.node.url+"?topic=never-published")
	empty.Expect("subscribed", testutil.Wait)
	if n := gatewayMetric(t, b, "wsbus_redis_errors_total"); n != 0 {
		t.Errorf("wsbus_redis_errors_total %d on a healthy node, want 0", n)
	}
}

// TestResumeMissedCounted resumes from a cursor whose events history has
// trimmed: the answer, recovered:false with "missed", is counted in
// wsbus_gateway_not_recovered_total and its missed events in
// wsbus_gateway_resume_missed_total.
func TestResumeMissedCounted(t *testing.T) {
	b := newTestBus(t, "--history-len", "10")
	var ids []string
	for i := range 500 { // trimming keeps whole nodes of ~100 entries
		ids = append(ids, b.XAdd(t, "gone", strconv.Itoa(i)))
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if h := b.historyIDs(t, "gone"); len(h) == 0 || h[0] == ids[0] || h[len(h)-1] != ids[499] {
			return fmt.Errorf("history of %d events, not yet trimmed to end at the last", len(h))
		}
		return nil
	})
	ctl := wstest.Dial(t, b.node.url+"?topic=gone&since="+ids[499])
	epoch := ctl.Expect("subscribed", testutil.Wait).Epoch
	c := wstest.Dial(t, b.node.url)
	c.Send(map[string]any{"type": "subscribe", "topic": "gone", "since": ids[0], "seq": 1, "epoch": epoch})
	sub := c.Expect("subscribed", testutil.Wait)
	if sub.Recovered || sub.Missed == nil || *sub.Missed == 0 {
		t.Fatalf("resume from seq 1 of 500 with about 10 kept: recovered %v, missed %v; want recovered:false with a count", sub.Recovered, sub.Missed)
	}
	if n := gatewayMetric(t, b, "wsbus_gateway_not_recovered_total"); n != 1 {
		t.Errorf("wsbus_gateway_not_recovered_total %d, want 1", n)
	}
	if n := gatewayMetric(t, b, "wsbus_gateway_resume_missed_total"); n != int(*sub.Missed) {
		t.Errorf("wsbus_gateway_resume_missed_total %d, want the %d the client was told", n, *sub.Missed)
	}
}
