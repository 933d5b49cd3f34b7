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

	"github.com/wsbus/wsbus/internal/bustest"
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

// testBus is a bus served by a node: its Redis, its prefix and the node.
type testBus struct {
	*bustest.Bus
	srv    *redistest.Server
	prefix string
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
	node := startNode(tb, serveConfig(tb, srv, prefix, args...))
	return &testBus{Bus: bustest.On(tb, srv.Client(tb), prefix), srv: srv, prefix: prefix, node: node}
}

// historyIDs returns the IDs in topic's history stream.
func (b *testBus) historyIDs(tb testing.TB, topic string) []string {
	tb.Helper()
	msgs, err := b.Redis.XRange(context.Background(), b.Keys.Topic(streams.Partition(topic, b.N), topic), "-", "+").Result()
	if err != nil {
		tb.Fatalf("XRANGE: %v", err)
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func httpNewRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}
