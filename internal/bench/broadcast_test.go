package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeWorker answers every "report" and "count" with the receipts
// received (read each time from received), as a worker process does on
// its pipes; its "count" says closed connections were closed.
func fakeWorker(t *testing.T, received func() uint64, closed int) *workerProc {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		defer outW.Close()
		sc := bufio.NewScanner(inR)
		enc := json.NewEncoder(outW)
		for sc.Scan() {
			var answer any
			switch strings.TrimSpace(sc.Text()) {
			case "report":
				answer = Report{Received: received()}
			case "count":
				answer = Count{Received: received(), Closed: closed}
			default:
				continue
			}
			if enc.Encode(answer) != nil {
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
// With one server, the events are Gap apart whatever comes.
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
				st := &stage{server: "wsbus", space: "bench:", res: &Result{Conns: 10}, publish: publish, workers: []*workerProc{fakeWorker(t, received, 0)}}
				if err := broadcast(context.Background(), cfg, []*stage{st}); err != nil {
					t.Fatal(err)
				}
				lat := st.res.Broadcast
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

// fakeServer is a server of a broadcast's turns: each event it is
// published reaches reached of its subscribers after delay, late more
// after lateBy, and the others never (closed of them were closed, the
// rest are just lost).
type fakeServer struct {
	name                               string
	delay, lateBy                      time.Duration
	subscribers, reached, late, closed int

	mu        sync.Mutex
	published []time.Time
}

// publish is the server's publishFunc; log records every publish of
// every server in order.
func (f *fakeServer) publish(log *[]string, logMu *sync.Mutex) publishFunc {
	return func(_ context.Context, topic string, data []byte) error {
		var e eventData
		if err := json.Unmarshal(data, &e); err != nil {
			return err
		}
		logMu.Lock()
		*log = append(*log, fmt.Sprintf("%s %s %d", f.name, topic, e.K))
		logMu.Unlock()
		f.mu.Lock()
		f.published = append(f.published, time.Now())
		f.mu.Unlock()
		return nil
	}
}

// received counts the receipts of the events published so far.
func (f *fakeServer) received() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n uint64
	for _, at := range f.published {
		if time.Since(at) >= f.delay {
			n += uint64(f.reached)
		}
		if f.late > 0 && time.Since(at) >= f.lateBy {
			n += uint64(f.late)
		}
	}
	return n
}

// TestBroadcastTakesTurns: with several servers, the broadcasts go to
// each in turn, each on its stage's own topic, and the next event waits
// for the receipts of the one before from every connection not closed,
// or for roundQuiet once they stop coming: a slow server's delivery
// never overlaps another's. The rounds go over the servers in orders
// of their own.
func TestBroadcastTakesTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log []string
		var logMu sync.Mutex
		servers := []*fakeServer{
			{name: "wsbus", delay: 300 * time.Millisecond, subscribers: 10, reached: 10},
			{name: "slow", delay: 1500 * time.Millisecond, subscribers: 10, reached: 10},
			{name: "half", delay: 200 * time.Millisecond, subscribers: 10, reached: 5},              // 5 lost: the round ends roundQuiet after the 5
			{name: "closed", delay: 200 * time.Millisecond, subscribers: 10, reached: 6, closed: 4}, // 4 closed: the round ends with the 6
			// 2 come after the round ended: they count for their own
			// event, not the next one, whose round waits for its own.
			{name: "late", delay: 200 * time.Millisecond, lateBy: 1700 * time.Millisecond, subscribers: 10, reached: 8, late: 2},
		}
		var stages []*stage
		for i, f := range servers {
			stages = append(stages, &stage{server: f.name, space: topicSpace(fmt.Sprintf("bench:s%d.", i)), res: &Result{Conns: f.subscribers},
				publish: f.publish(&log, &logMu), workers: []*workerProc{fakeWorker(t, f.received, f.closed)}})
		}
		cfg := Config{Broadcasts: 3, Gap: 100 * time.Millisecond}
		if err := broadcast(context.Background(), cfg, stages); err != nil {
			t.Fatal(err)
		}
		// Every round publishes event k once to each server, on its own
		// topic, in an order of its own.
		var orders []string
		for k := range cfg.Broadcasts {
			round := slices.Clone(log[k*len(servers) : (k+1)*len(servers)])
			var order []string
			for _, p := range round {
				name, _, _ := strings.Cut(p, " ")
				order = append(order, name)
			}
			orders = append(orders, strings.Join(order, ","))
			slices.Sort(round)
			var want []string
			for i, f := range servers {
				want = append(want, fmt.Sprintf("%s bench:s%d.shared %d", f.name, i, k))
			}
			slices.Sort(want)
			if !slices.Equal(round, want) {
				t.Errorf("round %d published %q, want %q", k, round, want)
			}
		}
		if len(slices.Compact(slices.Clone(orders))) == 1 {
			t.Errorf("every round went over the servers in the order %s", orders[0])
		}
		// Each server's event waits for the previous server's receipts,
		// and after the half one's for roundQuiet more.
		byName := map[string]*fakeServer{}
		for _, f := range servers {
			byName[f.name] = f
		}
		var at []time.Time
		var who []*fakeServer
		seen := map[string]int{}
		for _, p := range log {
			name, _, _ := strings.Cut(p, " ")
			f := byName[name]
			at = append(at, f.published[seen[name]])
			who = append(who, f)
			seen[name]++
		}
		for i := 1; i < len(at); i++ {
			prev := who[i-1]
			wait := max(prev.delay, cfg.Gap)
			if prev.reached+prev.closed < prev.subscribers {
				wait += roundQuiet
			}
			if got := at[i].Sub(at[i-1]); got < wait || got > wait+100*time.Millisecond {
				t.Errorf("publish %d came %v after the one before, want %v (and up to 100 ms more)", i, got, wait)
			}
		}
		for i, st := range stages {
			lost := int64(cfg.Broadcasts * (servers[i].subscribers - servers[i].reached - servers[i].late))
			if st.res.Broadcast == nil || st.res.Broadcast.Lost != lost {
				t.Errorf("%s: broadcast %+v, want %d lost", st.server, st.res.Broadcast, lost)
			}
		}
	})
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

// TestLaterPhases: the phases each server runs after the broadcast, as
// finish runs them and the run's progress names them: none for the floor
// in the default run, so no heading with nothing under it.
func TestLaterPhases(t *testing.T) {
	def := Config{Mix: "shared", Storm: 1, UnicastRate: 100}
	for _, tc := range []struct {
		server string
		cfg    Config
		want   string
	}{
		{"wsbus", def, "resume storm"},
		{Naive, def, "resume storm"},
		{Floor, def, ""},
		{Centrifugo, def, "resume storm"},
		{"wsbus", Config{Mix: "pair", Storm: 1, UnicastRate: 100, Capacity: true}, "unicast, resume storm, capacity"},
		{Centrifugo, Config{Mix: "pair", Storm: 1, UnicastRate: 100}, "resume storm"},
		{Floor, Config{Mix: "own", UnicastRate: 100, Capacity: true}, "unicast, capacity"},
	} {
		st := &stage{server: tc.server}
		if got := strings.Join(st.later(tc.cfg), ", "); got != tc.want {
			t.Errorf("%s, %+v: later phases %q, want %q", tc.server, tc.cfg, got, tc.want)
		}
	}
}
