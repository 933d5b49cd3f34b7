package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// fakeWorker answers every "report" with a report of received receipts
// (read each time from received), as a worker process does on its pipes.
func fakeWorker(t *testing.T, received func() uint64) *workerProc {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		defer outW.Close()
		sc := bufio.NewScanner(inR)
		enc := json.NewEncoder(outW)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) != "report" {
				continue
			}
			if enc.Encode(Report{Received: received()}) != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { _ = inW.Close() })
	return &workerProc{in: inW, out: bufio.NewScanner(outR)}
}

// TestBroadcastWait: the broadcast phase waits for receipts while they
// come, up to its deadline of 10 s, and stops broadcastQuiet after the
// last one when some never come (a server that closed slow clients),
// counting them lost. 10 broadcasts to 10 subscribers: 100 receipts.
func TestBroadcastWait(t *testing.T) {
	for _, tc := range []struct {
		name     string
		every    time.Duration // a receipt comes this often
		until    time.Duration // and no more after this
		min, max time.Duration // how long the phase takes
		wantLost int64
	}{
		{"all come", 20 * time.Millisecond, time.Minute, 2 * time.Second, 2500 * time.Millisecond, 0},
		{"some never come", 100 * time.Millisecond, time.Second, time.Second + broadcastQuiet, 1500*time.Millisecond + broadcastQuiet, 90},
		{"still coming at the deadline", time.Second, time.Minute, 10 * time.Second, 11 * time.Second, 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				received := func() uint64 { return uint64(min(time.Since(start), tc.until) / tc.every) }
				publish := func(context.Context, string, []byte) error { return nil }
				cfg := Config{Broadcasts: 10, Gap: time.Millisecond}
				lat, err := broadcast(context.Background(), cfg, publish, []*workerProc{fakeWorker(t, received)}, 10)
				if err != nil {
					t.Fatal(err)
				}
				if took := time.Since(start); took < tc.min || took > tc.max {
					t.Errorf("took %v, want %v to %v", took, tc.min, tc.max)
				}
				if lat.Lost != tc.wantLost {
					t.Errorf("lost %d, want %d", lat.Lost, tc.wantLost)
				}
			})
		})
	}
}

// TestSettleFor: the baselines, which return their memory within 6 s of
// the last upgrade, settle at most baselineSettle; the gateway and
// Centrifugo the whole settle asked for.
func TestSettleFor(t *testing.T) {
	cfg := Config{Settle: 12 * time.Second}
	for server, want := range map[string]time.Duration{"wsbus": 12 * time.Second, Centrifugo: 12 * time.Second, Naive: 9 * time.Second, Floor: 9 * time.Second} {
		if got := settleFor(cfg, server); got != want {
			t.Errorf("%s settles %v, want %v", server, got, want)
		}
	}
	if got := settleFor(Config{Settle: time.Second}, Naive); got != time.Second {
		t.Errorf("naive settles %v of a settle of 1 s", got)
	}
}
