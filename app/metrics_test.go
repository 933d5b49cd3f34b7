package app

import (
	"testing"

	"github.com/wsbus/wsbus/internal/wstest"
)

// TestDeliveryLatencyOncePerEvent publishes three events to a topic two
// clients read on one node: wsbus_delivery_latency_seconds has three
// observations, one per event and gateway, not one per socket; and each
// applied batch is timed in wsbus_bus_apply_seconds.
func TestDeliveryLatencyOncePerEvent(t *testing.T) {
	b := newTestBus(t)
	var clients []*wstest.Client
	for range 2 {
		c := wstest.Dial(t, b.node.url+"?topic=lat")
		c.Expect("subscribed", wait)
		clients = append(clients, c)
	}
	before := gatewayMetric(t, b, "wsbus_delivery_latency_seconds_count")
	for _, data := range []string{"1", "2", "3"} {
		b.xadd(t, "lat", data)
	}
	for _, c := range clients {
		c.Events(3, wait)
	}
	if n := gatewayMetric(t, b, "wsbus_delivery_latency_seconds_count") - before; n != 3 {
		t.Errorf("%d latency observations for 3 events read by 2 clients, want 3", n)
	}
	if n := gatewayMetric(t, b, "wsbus_bus_apply_seconds_count"); n < 1 {
		t.Errorf("%d applied batches timed after 3 events", n)
	}
}
