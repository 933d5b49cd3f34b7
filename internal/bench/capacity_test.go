package bench

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wsbus/wsbus/streams"
)

// TestCapacitySearch runs the search against a fake server whose slowest
// receipt's p99 passes 100 ms at a known rate (and which loses receipts
// well past it): the search ends within one step of tolerance below that
// rate, by itself, and never reports a rate it did not keep up with.
func TestCapacitySearch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit float64 // the fake's capacity, deliveries/s
		want  string  // how the search ends
	}{
		{"doubling then bisecting", 345_678, "bisected to within 10%"},
		{"the first step too fast", 2_345, "bisected to within 10%"},
		{"at a doubled rate exactly", 80_000, "bisected to within 10%"},
		{"beyond the highest rate", 5e6, "kept up at the highest rate tried"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := capacitySearch{Start: 10_000, Max: 2e6, Tolerance: 0.1, MaxSteps: 30, MaxP99: 100 * time.Millisecond}
			c, err := s.search(func(rate float64) (CapacityStep, error) {
				st := CapacityStep{Delivered: rate, LastP99: time.Duration(float64(100*time.Millisecond) * rate / tc.limit)}
				if rate > 1.5*tc.limit {
					st.Lost = 1
				}
				return st, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.Ended != tc.want {
				t.Fatalf("ended %q after %d steps, want %q", c.Ended, len(c.Steps), tc.want)
			}
			want := min(tc.limit, s.Max)
			if c.Sustained >= tc.limit || c.Sustained < want*(1-s.Tolerance) {
				t.Errorf("sustained %.0f, want within 10%% below %.0f", c.Sustained, want)
			}
			for i, st := range c.Steps {
				if st.Kept != (st.Offered < tc.limit) {
					t.Errorf("step at %.0f kept up %v with the limit at %.0f", st.Offered, st.Kept, tc.limit)
				}
				if st.Retry != (i > 0 && !c.Steps[i-1].Kept && !c.Steps[i-1].Retry) || st.Retry && st.Offered != c.Steps[i-1].Offered {
					t.Errorf("step %d at %.0f: retry %v after %+v", i, st.Offered, st.Retry, c.Steps[i-1])
				}
			}
			if len(c.Steps) > 25 {
				t.Errorf("%d steps", len(c.Steps))
			}
		})
	}
}

// TestCapacitySearchRetries runs the search against a server that keeps
// up to a known rate but stalls once, at a rate well below it: the stalled
// step is tried again, counts as kept, and the search goes on up to the
// server's limit.
func TestCapacitySearchRetries(t *testing.T) {
	const limit, stallAt = 100_000.0, 20_000.0
	stalled := false
	s := capacitySearch{Start: 10_000, Max: 2e6, Tolerance: 0.1, MaxSteps: 30, MaxP99: 100 * time.Millisecond}
	c, err := s.search(func(rate float64) (CapacityStep, error) {
		st := CapacityStep{Delivered: rate, LastP99: time.Duration(float64(100*time.Millisecond) * rate / limit)}
		if rate == stallAt && !stalled {
			stalled, st.LastP99 = true, time.Second
		}
		return st, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Sustained >= limit || c.Sustained < limit*(1-s.Tolerance) {
		t.Fatalf("sustained %.0f, want within 10%% below %.0f; steps %+v", c.Sustained, limit, c.Steps)
	}
	if st := c.Steps[1:3]; st[0].Offered != stallAt || st[0].Kept || st[0].Retry || st[1].Offered != stallAt || !st[1].Kept || !st[1].Retry {
		t.Fatalf("steps 1 and 2: %+v, want the stall at %.0f failed, then kept on its retry", st, stallAt)
	}
}

// TestCapacitySearchStops: the search stops at its step limit, and at its
// deadline, even against a server that keeps up with everything.
func TestCapacitySearchStops(t *testing.T) {
	keeps := func(rate float64) (CapacityStep, error) { return CapacityStep{Delivered: rate}, nil }
	s := capacitySearch{Start: 1, Max: 1e12, Tolerance: 0.1, MaxSteps: 5, MaxP99: 100 * time.Millisecond}
	c, err := s.search(keeps)
	if err != nil || len(c.Steps) != 5 || c.Sustained != 16 {
		t.Fatalf("steps %d, sustained %v, err %v: want 5 steps to 16/s", len(c.Steps), c.Sustained, err)
	}
	s.MaxSteps, s.Deadline = 100, time.Now().Add(-time.Second)
	if c, err = s.search(keeps); err != nil || len(c.Steps) != 0 || c.Ended != "out of time" {
		t.Fatalf("past the deadline: %d steps, ended %q, err %v", len(c.Steps), c.Ended, err)
	}
}

// TestCapacityReport records capacity events on two connections of a
// worker: the report counts every receipt of the events asked for, gives
// each one's slowest, and forgets the older ones.
func TestCapacityReport(t *testing.T) {
	now := time.Now().UnixNano()
	w := &worker{}
	for i := range 2 {
		wc := &wconn{fd: -1, shard: &w.shards[i]}
		w.conns = append(w.conns, wc)
		for k := range int64(4) {
			delay := time.Duration(k+1) * time.Millisecond * time.Duration(i+1)
			data, _ := json.Marshal(eventData{T: now - int64(delay), K: capacityBase + k})
			w.record(wc, streams.AppendEvent(nil, "bench:c0", fmt.Sprintf("1-%d", k+1), uint64(k+1), data), now)
		}
	}
	rep := w.capacityReport(2, true)
	want := []uint64{6001, 8001} // events 2 and 3, slowest on the second connection, µs plus one
	if rep.Received != 4 || !slices.Equal(rep.Last, want) || rep.Open != 0 {
		t.Fatalf("report from 2: %+v, want 4 receipts, last %v, none open", rep, want)
	}
	if rep = w.capacityReport(0, false); rep.Received != 4 || rep.Last != nil {
		t.Fatalf("report from 0 after one from 2: %+v, want the 4 receipts of events 2 and 3 only, no last", rep)
	}
	if got := w.received.Load(); got != 0 {
		t.Errorf("capacity events counted as %d broadcast receipts", got)
	}
}
