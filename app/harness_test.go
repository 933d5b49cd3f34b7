package app

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/streams"
)

// testNode is a gateway node served in-process.
type testNode struct {
	addr string
	url  string // WebSocket URL
	stop func() // drains the node and waits for it
}

// testConfig returns serve's defaults for an insecure test bus on srv.
func testConfig(tb testing.TB, srv *redistest.Server, prefix string, args ...string) ServeConfig {
	tb.Helper()
	return serveConfig(tb, srv, prefix, append([]string{"--insecure"}, args...)...)
}

// serveConfig returns serve's defaults for a test bus on srv, with args.
func serveConfig(tb testing.TB, srv *redistest.Server, prefix string, args ...string) ServeConfig {
	tb.Helper()
	return serveConfigURL(tb, srv.URL(), prefix, args...)
}

// serveConfigURL returns serve's defaults for a test bus on the Redis of
// redisURL (a --redis value), with args.
func serveConfigURL(tb testing.TB, redisURL, prefix string, args ...string) ServeConfig {
	tb.Helper()
	var c ServeConfig
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.register(fs)
	// The canary is off unless a test turns it on: its connection, topics
	// and events would be in what other tests count.
	base := []string{"--redis", redisURL, "--prefix", prefix, "--listen", "127.0.0.1:0", "--node-id", "node-" + prefix, "--canary-interval", "0"}
	if err := fs.Parse(append(base, args...)); err != nil {
		tb.Fatalf("parsing test flags: %v", err)
	}
	if !wasSet(fs, "partitions") {
		c.Partitions = 0
	}
	if err := c.check(); err != nil {
		tb.Fatal(err)
	}
	return c
}

// startNode serves a node with cfg until the test ends (or stop).
func startNode(tb testing.TB, cfg ServeConfig) *testNode {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- Serve(ctx, cfg, logger, func(addr string) { ready <- addr }) }()
	var n testNode
	select {
	case n.addr = <-ready:
	case err := <-done:
		tb.Fatalf("node did not start: %v", err)
	case <-time.After(10 * time.Second):
		tb.Fatal("node did not start within 10s")
	}
	n.url = "ws://" + n.addr + "/v1/ws"
	stopped := false
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("node stopped with %v", err)
		}
	}
	tb.Cleanup(n.stop)
	return &n
}

// bus is a test bus: a Redis, a prefix and a node.
type testBus struct {
	srv    *redistest.Server
	rdb    *redis.Client
	prefix string
	keys   streams.Keys
	n      int
	node   *testNode
}

func newTestBus(tb testing.TB, args ...string) *testBus {
	tb.Helper()
	return startBus(tb, append([]string{"--insecure"}, args...)...)
}

// startBus starts a Redis and a node served with args.
func startBus(tb testing.TB, args ...string) *testBus {
	tb.Helper()
	srv := redistest.Start(tb)
	prefix := redistest.Prefix(tb)
	b := &testBus{srv: srv, rdb: srv.Client(tb), prefix: prefix, keys: streams.Keys{Prefix: prefix}}
	b.node = startNode(tb, serveConfig(tb, srv, prefix, args...))
	n, err := streams.Partitions(context.Background(), b.rdb, b.keys)
	if err != nil {
		tb.Fatal(err)
	}
	b.n = n
	return b
}

// xadd publishes as any service would: a plain XADD to the topic's partition.
func (b *testBus) xadd(tb testing.TB, topic, data string) string {
	tb.Helper()
	return b.xaddTo(tb, streams.Partition(topic, b.n), "topic", topic, "data", data)
}

// xaddTo adds an entry with the given fields to partition p's ingress.
func (b *testBus) xaddTo(tb testing.TB, p int, fields ...any) string {
	tb.Helper()
	id, err := b.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: b.keys.Ingress(p), Values: fields}).Result()
	if err != nil {
		tb.Fatalf("XADD: %v", err)
	}
	return id
}

// historyIDs returns the IDs in topic's history stream.
func (b *testBus) historyIDs(tb testing.TB, topic string) []string {
	tb.Helper()
	msgs, err := b.rdb.XRange(context.Background(), b.keys.Topic(streams.Partition(topic, b.n), topic), "-", "+").Result()
	if err != nil {
		tb.Fatalf("XRANGE: %v", err)
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

const wait = 5 * time.Second

var httpClient = &http.Client{Timeout: 5 * time.Second}

func httpNewRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}
