package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/bench"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// TestMain lets this test binary serve as the wsbus command for the bench's
// child processes: with WSBUS_TEST_MAIN=1 it runs the arguments after "--".
func TestMain(m *testing.M) {
	if os.Getenv("WSBUS_TEST_MAIN") == "1" {
		i := slices.Index(os.Args, "--")
		os.Exit(Main(os.Args[i+1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// benchConfig runs the bench's workers and baselines from this test binary.
func benchConfig(b *testBus) bench.Config {
	self := []string{"-test.run=^$", "--"}
	return bench.Config{
		URL: b.node.url, Redis: b.Redis, Keys: streams.Keys{Prefix: b.prefix},
		Executable: os.Args[0], Env: []string{"WSBUS_TEST_MAIN=1"},
		WorkerArgs: append(self, "bench", "--worker"),
		BaselineArgs: func(kind string) []string {
			return append(self, "bench", "--baseline-server", kind, "--redis", b.srv.URL(), "--prefix", b.prefix)
		},
		Progress: io.Discard,
	}
}

// TestBenchRun drives a small bench against an in-process gateway and both
// baselines: two worker processes each, every connection counted, every
// broadcast received, and the resume storm exact where it runs.
func TestBenchRun(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	cfg := benchConfig(b)
	cfg.Conns, cfg.PerWorker, cfg.Mix = 200, 100, "shared"
	cfg.Broadcasts, cfg.Gap, cfg.Storm = 3, 50*time.Millisecond, 5
	cfg.Baselines = []string{bench.Naive, bench.Floor}
	cmp, err := bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmp.Results) != 3 {
		t.Fatalf("%d results, want the gateway's and two baselines'", len(cmp.Results))
	}
	for i, server := range []string{"wsbus", bench.Naive, bench.Floor} {
		res := cmp.Results[i]
		if res.Server != server || res.Workers != 2 || res.Failed != 0 {
			t.Fatalf("result %d: server %q, workers %d, failed %d", i, res.Server, res.Workers, res.Failed)
		}
		if res.Loaded.FDs-res.Baseline.FDs < 200 {
			t.Errorf("%s: open fds grew by %.0f, want at least one per connection", server, res.Loaded.FDs-res.Baseline.FDs)
		}
		bc := res.Broadcast
		if bc == nil || bc.Receipts != 600 || bc.Lost != 0 || bc.LastMax <= 0 || bc.AllP50 > bc.AllMax {
			t.Fatalf("%s: broadcast = %+v, want 600 receipts, none lost", server, bc)
		}
		st := res.Storm
		if server == bench.Floor {
			if st != nil {
				t.Errorf("floor: resume storm %+v, want none (the floor cannot resume)", st)
			}
			continue
		}
		if st == nil || !st.Done || st.NotRecovered != 0 || st.Lost != 0 || st.Duplicates != 0 || st.Failed != 0 {
			t.Fatalf("%s: resume storm = %+v, want every client recovered with its 5 missed events, nothing lost or twice", server, st)
		}
	}
	dir := filepath.Join(t.TempDir(), "report")
	if err := writeReport(dir, cmp, []string{"wsbus", "bench"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), `<path class="cdf"`); n != 6 {
		t.Errorf("the report has %d latency lines, want one per server in each of the two broadcast plots", n)
	}
	for _, kind := range []string{bench.Naive, bench.Floor} {
		r := cmp.Ratios[kind]
		want := float64(cmp.Results[0].Broadcast.LastP99) / float64(cmp.Results[slices.IndexFunc(cmp.Results, func(r *bench.Result) bool { return r.Server == kind })].Broadcast.LastP99)
		if r["broadcast_last_p99"] != want {
			t.Errorf("ratio to %s: broadcast_last_p99 %v, want %v", kind, r["broadcast_last_p99"], want)
		}
	}
}

// TestBenchUnicast publishes to each connection's own topic at a fixed
// rate: every event arrives, at the gateway and at the naive baseline.
func TestBenchUnicast(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	cfg := benchConfig(b)
	cfg.Conns, cfg.Mix, cfg.UnicastRate, cfg.UnicastFor = 100, "own", 500, time.Second
	cfg.Baselines = []string{bench.Naive}
	cmp, err := bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range cmp.Results {
		u := res.Unicast
		if u == nil || u.Sent < 450 || u.Lost != 0 || u.Received != uint64(u.Sent) || u.P99 <= 0 {
			t.Fatalf("%s: unicast = %+v, want about 500 events, none lost", res.Server, u)
		}
	}
	if _, ok := cmp.Ratios[bench.Naive]["unicast_p99"]; !ok {
		t.Errorf("ratios %v lack unicast_p99", cmp.Ratios)
	}
}

// TestBenchCapacity runs a short capacity phase against the gateway and
// the floor, at rates far below either's limit: every step is kept up
// with, every receipt counted, and the search ends at its highest rate.
func TestBenchCapacity(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	cfg := benchConfig(b)
	cfg.Conns, cfg.PerWorker, cfg.Mix, cfg.Broadcasts = 100, 50, "shared", 0
	cfg.Capacity, cfg.CapacityTopics, cfg.CapacityStart, cfg.CapacityMax = true, 10, 200, 400
	cfg.CapacityStep, cfg.CapacityFor = 500*time.Millisecond, time.Minute
	cfg.Baselines = []string{bench.Floor}
	cmp, err := bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range cmp.Results {
		c := res.Capacity
		if c == nil || c.Subscribers != 100 || c.Topics != 10 || len(c.Steps) != 2 || c.Ended != "kept up at the highest rate tried" {
			t.Fatalf("%s: capacity = %+v, want 2 steps to 400/s over 10 topics", res.Server, c)
		}
		for _, st := range c.Steps {
			if !st.Kept || st.Lost != 0 || st.Receipts != uint64(st.Events)*10 {
				t.Errorf("%s: step %+v, want kept up with 10 receipts an event", res.Server, st)
			}
		}
		if c.Sustained < 300 {
			t.Errorf("%s: sustained %.0f deliveries/s, want about 400", res.Server, c.Sustained)
		}
	}
	if _, ok := cmp.Ratios[bench.Floor]["capacity"]; !ok {
		t.Errorf("ratios %v lack capacity", cmp.Ratios)
	}
}

// TestBenchSoak runs a short soak over two in-process gateways, one of
// them stopped (a drain with 4002) and served again on its address once
// the steady phase begins: every event is delivered once and in order at
// every client, through the switches of topic and the reconnects.
func TestBenchSoak(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	cfg2 := testConfig(t, b.srv, b.prefix, "--upgrade-rate", "100000", "--node-id", "node2-"+b.prefix)
	node2 := startNode(t, cfg2)
	ready := filepath.Join(t.TempDir(), "ready")
	restarted := make(chan func(), 1) // stops the node served again
	go func() {
		defer close(restarted)
		if err := testutil.Poll(time.Minute, func() error {
			_, err := os.Stat(ready)
			return err
		}); err != nil {
			t.Errorf("the soak's steady phase did not begin: %v", err)
		}
		node2.stop()
		cfg := cfg2
		cfg.Listen = node2.addr
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		up := make(chan string, 1)
		go func() {
			done <- Serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(a string) { up <- a })
		}()
		select {
		case <-up:
		case <-done:
		}
		restarted <- func() { cancel(); <-done }
	}()
	cfg := benchConfig(b)
	cfg.MoreURLs = []string{node2.url}
	cfg.Conns, cfg.Topics = 100, 10
	res, err := bench.Soak(context.Background(), bench.SoakConfig{
		Config: cfg, Duration: 4 * time.Second, Rate: 200, Churn: 20, ReadyFile: ready, Samples: 1,
	})
	if stop, ok := <-restarted; ok {
		t.Cleanup(stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	c := res.Check
	if c.Failed() || c.Delivered == 0 || c.Delivered != c.Due || res.Published < 600 {
		t.Fatalf("check %+v after %d published; notes %q", c, res.Published, res.Notes)
	}
	if res.NotRecovered != 0 || res.Unexpected != 0 || res.GaveUp != 0 || res.NotReady != 0 || res.Failed != 0 {
		t.Fatalf("not recovered %d, unexpected %d, not back %d, not settled %d, failed %d; notes %q",
			res.NotRecovered, res.Unexpected, res.GaveUp, res.NotReady, res.Failed, res.Notes)
	}
	if res.Reconnects < 50 || res.Churned == 0 || c.Spans <= 100 {
		t.Fatalf("%d reconnects (want the 50 of the restarted gateway), %d switches, %d spans", res.Reconnects, res.Churned, c.Spans)
	}
	for i, g := range res.Gateways {
		if g.Start.Conns != 50 || g.End.Conns != 50 {
			t.Errorf("gateway %d: %v connections at the start, %v at the end, want 50", i+1, g.Start.Conns, g.End.Conns)
		}
	}
}

// TestBenchCentrifugoFlags: centrifugo is a server for --baselines only,
// and only with the URL of the Centrifugo to measure.
func TestBenchCentrifugoFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"bench", "--baselines", "naive,centrifugo"}, "the centrifugo baseline needs --centrifugo-url"},
		{[]string{"bench", "--baseline-server", "centrifugo", "--centrifugo-url", "ws://127.0.0.1:1/connection/websocket"}, `unknown baseline "centrifugo"`},
		{[]string{"bench", "--baselines", "nginx"}, `unknown baseline "nginx"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := Main(tt.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tt.args, code, stderr.String(), tt.want)
		}
	}
}
