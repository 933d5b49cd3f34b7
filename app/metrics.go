package app

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// observed holds the node's histograms: the packages below app record
// into them through the hooks of their configs, one observation per
// event or batch, never per socket.
type observed struct {
	apply, delivery prometheus.Histogram
}

func newObserved() *observed {
	return &observed{
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wsbus_bus_apply_seconds",
			Help:    "Time to apply one batch of a partition's ingress entries (to history, live pub/sub, dead letters and deadlines) in one Redis script.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wsbus_delivery_latency_seconds",
			Help:    "From an event's XADD (the time in its ID) to its frame handed to every subscriber's connection on this gateway: one observation per event and gateway, not per socket; the canary's events are not counted here.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
}

func (o *observed) collectors() []prometheus.Collector {
	return []prometheus.Collector{o.apply, o.delivery}
}

// metrics builds the node's registry: the standard Go and process
// collectors beside gauges and counters read from each package's Stats.
func (h *httpAPI) metrics() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge("wsbus_ws_connections", "Open WebSocket connections of clients (the node's own canary not counted).", func() float64 {
		return float64(max(h.ws.Stats().Connections-int64(h.canary.connections()), 0))
	})
	counter("wsbus_ws_upgrades_total", "Successful WebSocket upgrades.", func() float64 { return float64(h.ws.Stats().Upgraded) })
	counter("wsbus_ws_handshake_errors_total", "Refused or failed WebSocket upgrades.", func() float64 { return float64(h.ws.Stats().HandshakeErrors) })
	counter("wsbus_ws_refused_total", "Upgrades refused for the connection or rate limit (503).", func() float64 { return float64(h.ws.Stats().Refused) })
	counter("wsbus_ws_accept_cooldowns_total", "Accept-loop pauses for too many pending handshakes.", func() float64 { return float64(h.ws.Stats().Cooldowns) })
	counter("wsbus_bus_handed_over_total", "Partitions given up to rebalance.", func() float64 { return float64(h.owner.Stats().HandedOver) })
	counter("wsbus_bus_epochs_renewed_total", "Partition epochs renewed: the partition's data found lost or gone back in time (by its owner, or by a gateway that saw a topic's seq go back).", func() float64 { return float64(h.owner.Stats().Epochs + h.gw.Stats().Epochs) })
	counter("wsbus_ws_messages_in_total", "Client messages received.", func() float64 { return float64(h.ws.Stats().MessagesIn) })
	counter("wsbus_ws_frames_out_total", "Frames written to clients.", func() float64 { return float64(h.ws.Stats().FramesOut) })
	counter("wsbus_ws_frames_queued_total", "Frames that waited in a connection's queue (its socket was full, or earlier frames waited) rather than being written through at once.", func() float64 { return float64(h.ws.Stats().FramesQueued) })
	reg.MustRegister(queued{h})
	counter("wsbus_ws_bytes_out_total", "Bytes written to clients.", func() float64 { return float64(h.ws.Stats().BytesOut) })
	counter("wsbus_ws_slow_consumers_total", "Clients closed with 4001.", func() float64 { return float64(h.ws.Stats().SlowConsumers) })
	counter("wsbus_ws_pool_overflow_total", "Tasks run past the worker bound.", func() float64 { return float64(h.ws.Stats().PoolOverflow) })
	gauge("wsbus_gateway_subscriptions", "Open subscriptions.", func() float64 { return float64(h.gw.Stats().Subscriptions) })
	gauge("wsbus_gateway_topics", "Topics with a live channel subscription.", func() float64 { return float64(h.gw.Stats().Topics) })
	counter("wsbus_gateway_live_events_total", "Events received from pub/sub.", func() float64 { return float64(h.gw.Stats().LiveEvents) })
	counter("wsbus_gateway_resumes_total", "Subscriptions that sent a cursor.", func() float64 { return float64(h.gw.Stats().Resumes) })
	counter("wsbus_gateway_not_recovered_total", "Resumes answered recovered:false.", func() float64 { return float64(h.gw.Stats().NotRecovered) })
	counter("wsbus_gateway_resume_missed_total", "Events that resumes answered recovered:false reported missed (their \"missed\"), where history could tell.", func() float64 { return float64(h.gw.Stats().Missed) })
	counter("wsbus_gateway_lag_catchups_total", "Times a client fell more than --max-queue behind and was caught up from history (--slow-consumer lag).", func() float64 { return float64(h.gw.Stats().LagCatchUps) })
	counter("wsbus_gateway_catchups_total", "Topics caught up from history after a pub/sub loss.", func() float64 { return float64(h.gw.Stats().CatchUps) })
	counter("wsbus_gateway_resets_total", "Topics whose subscribers a catch-up closed with 4001 to resume: Redis lost data under them (a new epoch) or trimmed it before it was sent.", func() float64 { return float64(h.gw.Stats().Resets) })
	gauge("wsbus_bus_partitions_owned", "Partitions this node holds.", func() float64 { return float64(h.owner.Stats().Owned) })
	counter("wsbus_bus_deliveries_total", "Events added to history and published.", func() float64 { return float64(h.owner.Stats().Delivered) })
	counter("wsbus_bus_dead_letters_total", "Entries moved to a dead-letter stream.", func() float64 { return float64(h.owner.Stats().DeadLettered) })
	counter("wsbus_bus_forwarded_total", "Misrouted entries forwarded to their partition.", func() float64 { return float64(h.owner.Stats().Forwarded) })
	counter("wsbus_bus_escalations_total", "Events with a deadline that no subject acknowledged in time, appended to <prefix>:escalations.", func() float64 { return float64(h.owner.Stats().Escalations) })
	counter("wsbus_gateway_acks_total", "Acks written to Redis, after coalescing per subject and topic.", func() float64 { return float64(h.gw.Stats().Acks) })
	counter("wsbus_bus_leases_lost_total", "Partition leases found lost.", func() float64 { return float64(h.owner.Stats().Lost) })
	gauge("wsbus_bus_partitions", "Partitions of the bus: every one has an owner in a healthy fleet.", func() float64 { return float64(h.partitions) })
	counter("wsbus_redis_errors_total", "Redis commands that failed for the connection or the server's state (timeouts, refused connections, LOADING, READONLY, CLUSTERDOWN...), not the replies the bus expects.", func() float64 { return float64(h.redisErrors.n.Load()) })
	reg.MustRegister(newIngressLag(h.rdb, h.keys, h.owner.Partitions))
	reg.MustRegister(h.observed.collectors()...)
	reg.MustRegister(h.canary.collectors()...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// queued reports the connections' queues from one walk of them per scrape
// (h.ws is set once the server is made, after the registry).
type queued struct{ h *httpAPI }

var (
	queuedBytesDesc = prometheus.NewDesc("wsbus_ws_queued_bytes", "Bytes waiting in the connections' queues, summed.", nil, nil)
	queuedConnsDesc = prometheus.NewDesc("wsbus_ws_queued_connections", "Connections with bytes waiting in their queue: clients not keeping up.", nil, nil)
)

func (q queued) Describe(ch chan<- *prometheus.Desc) { ch <- queuedBytesDesc; ch <- queuedConnsDesc }

func (q queued) Collect(ch chan<- prometheus.Metric) {
	b, n := q.h.ws.Queued()
	ch <- prometheus.MustNewConstMetric(queuedBytesDesc, prometheus.GaugeValue, float64(b))
	ch <- prometheus.MustNewConstMetric(queuedConnsDesc, prometheus.GaugeValue, float64(n))
}
