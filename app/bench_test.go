package app

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/bench"
	"github.com/wsbus/wsbus/streams"
)

// TestMain lets this test binary serve as a bench worker process.
func TestMain(m *testing.M) {
	if os.Getenv("WSBUS_BENCH_WORKER") == "1" {
		if err := bench.RunWorker(os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBenchRun drives a small bench against an in-process gateway: two
// worker processes, every connection counted, every broadcast received.
func TestBenchRun(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	res, err := bench.Run(context.Background(), bench.Config{
		URL: b.node.url, Redis: b.rdb, Keys: streams.Keys{Prefix: b.prefix},
		Conns: 200, PerWorker: 100, Mix: "shared", Broadcasts: 3, Gap: 50 * time.Millisecond, Storm: 5,
		Executable: os.Args[0], WorkerArgs: []string{"-test.run=^$"}, WorkerEnv: []string{"WSBUS_BENCH_WORKER=1"},
		Progress: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Workers != 2 || res.Failed != 0 {
		t.Fatalf("workers %d, failed %d", res.Workers, res.Failed)
	}
	if res.Loaded.FDs-res.Baseline.FDs < 200 {
		t.Errorf("open fds grew by %.0f, want at least one per connection", res.Loaded.FDs-res.Baseline.FDs)
	}
	bc := res.Broadcast
	if bc == nil || bc.Receipts != 600 || bc.Lost != 0 || bc.LastMax <= 0 || bc.AllP50 > bc.AllMax {
		t.Fatalf("broadcast = %+v, want 600 receipts, none lost", bc)
	}
	if st := res.Storm; st == nil || !st.Done || st.NotRecovered != 0 || st.Lost != 0 || st.Duplicates != 0 || st.Failed != 0 {
		t.Fatalf("resume storm = %+v, want every client recovered with its 5 missed events, nothing lost or twice", st)
	}
}

// TestBenchUnicast publishes to each connection's own topic at a fixed
// rate: every event arrives.
func TestBenchUnicast(t *testing.T) {
	b := newTestBus(t, "--upgrade-rate", "100000")
	res, err := bench.Run(context.Background(), bench.Config{
		URL: b.node.url, Redis: b.rdb, Keys: streams.Keys{Prefix: b.prefix},
		Conns: 100, Mix: "own", UnicastRate: 500, UnicastFor: time.Second,
		Executable: os.Args[0], WorkerArgs: []string{"-test.run=^$"}, WorkerEnv: []string{"WSBUS_BENCH_WORKER=1"},
		Progress: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	u := res.Unicast
	if u == nil || u.Sent < 450 || u.Lost != 0 || u.Received != uint64(u.Sent) || u.P99 <= 0 {
		t.Fatalf("unicast = %+v, want about 500 events, none lost", u)
	}
}
