package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// The capacity phase measures fan-out: each server's highest rate of
// deliveries with the slowest receipt of 99% of the events within 100 ms
// and nothing lost.
//
// It is the same for every server: the same client (worker.go, whose
// receipts are picked out of the frame without a JSON decoder), the same
// topics and subscribers (capacityTopics), and each server's own publish
// path at the same rising rate, a tick's events in one round trip: wsbus
// and the baselines, which read the bus's live channels, by one pipeline
// of XADDs to the ingress streams (then the gateway's owner, the
// partition's apply script, SPUBLISH); Centrifugo by one batch request of
// its HTTP API, whose publishes run in parallel through its Redis engine
// (history and PUBLISH).
//
// The topology is many topics of many subscribers each: by default
// (defaultCapacityTopics) the --conns subscribers over 100 topics, 190
// each at 19,000. What a delivery costs is one write(2) a subscriber
// whatever the topology (85% of the gateway's CPU at the limit is in it);
// what an event costs on the way in (XADD, the owner's read and apply
// script, SPUBLISH, the live channel's read) is paid once a topic, so the
// fewer subscribers a topic has, the sooner that path rather than fan-out
// is the limit. On the bench machine (2 cores, shared), in the runs that
// raised this: 2,000 subscribers over 100 topics (20 each) topped out at
// 27-30k deliveries/s on every server, 1,350-1,500 events/s through the
// bus, the same for the floor and the gateway, so the bus's path was what
// was measured; here 19,000 over 100 topics gave the gateway 21-40k
// deliveries/s (four runs, the machine loaded by others) from 110-210
// events/s, far inside what the path carries, and its profile at the limit
// is 85-90% write(2) (in bus.deliverTo). 19,000 over the 1,000 topics of
// the old default (19 each) would need 1,100-2,100 events/s for the same
// deliveries: what the path carried at its limit. Fewer topics still (one,
// the broadcast phase) measures fan-out too but not "many topics".

// defaultCapacityTopics is the capacity phase's topics when not set: see
// above.
const defaultCapacityTopics = 100

// Capacity is what the capacity phase measured: the highest rate of
// deliveries a server kept up with, every receipt in and the slowest
// receipt of 99% of the events within MaxP99, and the steps that found it.
type Capacity struct {
	Subscribers int           `json:"subscribers"`
	Topics      int           `json:"topics"`
	MaxP99      time.Duration `json:"max_last_p99_ns"`
	// Sustained is the deliveries per second received in the fastest step
	// kept up with; 0 when none was.
	Sustained float64        `json:"sustained_deliveries_per_sec"`
	Steps     []CapacityStep `json:"steps"`
	Ended     string         `json:"ended"` // why the search stopped
}

// CapacityStep is one rate tried for a few seconds.
type CapacityStep struct {
	Offered   float64       `json:"offered_deliveries_per_sec"`
	Delivered float64       `json:"delivered_per_sec"` // receipts over the time published
	Events    int           `json:"events"`
	Receipts  uint64        `json:"receipts"`
	Lost      int64         `json:"lost"`
	LastP99   time.Duration `json:"last_p99_ns"` // of each event's slowest receipt
	Behind    bool          `json:"publisher_behind,omitempty"`
	Retry     bool          `json:"retry,omitempty"` // the second try of a rate that failed
	Kept      bool          `json:"kept_up"`
}

// capacitySearch bounds the search of a rate.
type capacitySearch struct {
	Start, Max float64 // deliveries per second: the first rate and the highest tried
	// Tolerance ends the bisection once the slowest rate failed is within
	// this fraction of the fastest kept up with.
	Tolerance float64
	MaxSteps  int
	Deadline  time.Time // no step starts after it; zero: none
	MaxP99    time.Duration
}

// search finds the highest rate at which try's steps keep up: doubling
// from Start until one fails or Max is reached, then bisecting between the
// fastest kept up with and the slowest failed. A rate that fails is tried
// once more and counts as kept when the second try keeps up: on a machine
// shared with other work one stall (a p99 of a few hundred events is
// their slowest few) fails a step the server would keep up with, and the
// bisection never goes above a rate once it failed. It stops by itself,
// at MaxSteps or Deadline at the latest.
func (s capacitySearch) search(try func(rate float64) (CapacityStep, error)) (*Capacity, error) {
	c := &Capacity{MaxP99: s.MaxP99}
	good, bad := 0.0, 0.0 // bad == 0: no rate failed yet
	rate := s.Start
	retry := false // the last step failed and is tried again
	for {
		switch {
		case len(c.Steps) == s.MaxSteps:
			c.Ended = fmt.Sprintf("%d steps", s.MaxSteps)
			return c, nil
		case !s.Deadline.IsZero() && time.Now().After(s.Deadline):
			c.Ended = "out of time"
			return c, nil
		}
		st, err := try(rate)
		if err != nil {
			return nil, err
		}
		st.Offered, st.Retry = rate, retry
		st.Kept = st.Lost == 0 && st.LastP99 < s.MaxP99 && !st.Behind
		c.Steps = append(c.Steps, st)
		if retry = !st.Kept && !retry; retry {
			continue
		}
		if st.Kept {
			good = rate
			c.Sustained = max(c.Sustained, st.Delivered)
		} else {
			bad = rate
		}
		switch {
		case bad == 0 && rate >= s.Max:
			c.Ended = "kept up at the highest rate tried"
			return c, nil
		case bad == 0:
			rate = min(2*rate, s.Max)
		case bad-good <= s.Tolerance*bad:
			c.Ended = fmt.Sprintf("bisected to within %.0f%%", 100*s.Tolerance)
			return c, nil
		default:
			rate = (good + bad) / 2
		}
	}
}

// capacityBase is added to the number of a capacity event to make its
// kind: the numbers of broadcasts stay below it.
const capacityBase = int64(1) << 40

// CapacityReport is a worker's answer to "capacity FROM": of the capacity
// events numbered FROM and up, its open connections, the receipts, and
// (unless it was asked "capcount") each event's slowest receipt here in
// µs plus one, by number less FROM (0: not received).
type CapacityReport struct {
	Open     int      `json:"open"`
	Received uint64   `json:"received"`
	Last     []uint64 `json:"last,omitempty"`
}

// capacityTopics gives each of n subscribers one of topics topics, in turn.
func capacityTopics(n, topics int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "bench:c" + strconv.Itoa(i%topics)
	}
	return out
}

// capEvent is one event of the capacity phase.
type capEvent struct {
	topic string
	data  []byte
}

// batchPublishFunc publishes a tick's events to the server measured, in
// one round trip.
type batchPublishFunc func(ctx context.Context, events []capEvent) error

// batchPublisherFor publishes the capacity phase's events to server by
// its own publish path: Centrifugo through its HTTP API's batch at
// wsURL's host (cfBatchPublisher), the others (wsbus and the baselines,
// which all read the bus) by one pipeline of XADDs to the bus's ingress
// streams.
func batchPublisherFor(ctx context.Context, cfg Config, server, wsURL string) (batchPublishFunc, error) {
	if server == Centrifugo {
		return cfBatchPublisher(wsURL, cfg.CentrifugoAPIKey)
	}
	n, err := streams.Partitions(ctx, cfg.Redis, cfg.Keys)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, events []capEvent) error {
		pipe := cfg.Redis.Pipeline()
		for _, e := range events {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: cfg.Keys.Ingress(streams.Partition(e.topic, n)), Values: []any{"topic", e.topic, "data", e.data}})
		}
		_, err := pipe.Exec(ctx)
		return err
	}, nil
}

// capacityRun is the capacity phase against one server's connections.
type capacityRun struct {
	cfg     Config
	workers []*workerProc
	publish batchPublishFunc
	conns   int
	topics  []string       // the distinct topics, published to in turn
	subs    map[string]int // subscribers of each
	next    int64          // the number of the next event
}

// capacity holds the phase's connections (opened by the caller) and
// searches the highest rate of deliveries the server keeps up with,
// publishing with publish.
func capacity(ctx context.Context, cfg Config, publish batchPublishFunc, workers []*workerProc, assigned []string) (*Capacity, error) {
	r := &capacityRun{cfg: cfg, workers: workers, publish: publish, conns: len(assigned), subs: map[string]int{}}
	for _, t := range assigned {
		if r.subs[t] == 0 {
			r.topics = append(r.topics, t)
		}
		r.subs[t]++
	}
	s := capacitySearch{Start: cfg.CapacityStart, Max: cfg.CapacityMax, Tolerance: 0.1, MaxSteps: 16,
		Deadline: time.Now().Add(cfg.CapacityFor), MaxP99: 100 * time.Millisecond}
	// A first step, not counted, warms up what the first event of a topic
	// costs (in Redis, the gateway's bus, the server): the server measured
	// first would pay for the others.
	progress(cfg, "capacity: warming up")
	if _, err := r.step(ctx, cfg.CapacityStart/2); err != nil {
		return nil, err
	}
	c, err := s.search(func(rate float64) (CapacityStep, error) { return r.step(ctx, rate) })
	if err != nil {
		return nil, err
	}
	c.Subscribers, c.Topics = len(assigned), len(r.topics)
	progress(cfg, "capacity: %.0f deliveries/s sustained (%d subscribers on %d topics; %s)", c.Sustained, c.Subscribers, c.Topics, c.Ended)
	return c, nil
}

// step publishes at rate deliveries a second for cfg.CapacityStep, waits
// for the receipts, then for the server to be quiet and every connection
// open again.
func (r *capacityRun) step(ctx context.Context, rate float64) (CapacityStep, error) {
	perEvent := float64(r.conns) / float64(len(r.topics))
	eventsPerSec := rate / perEvent
	from := r.next
	var st CapacityStep
	var want int64
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	var batch []capEvent
	for ; time.Since(start) < r.cfg.CapacityStep; <-tick.C {
		due := from + int64(time.Since(start).Seconds()*eventsPerSec) + 1
		if float64(due-r.next) > max(eventsPerSec, 1) { // a second behind: the publisher, not the server, is the limit
			st.Behind = true
		}
		due = min(due, r.next+1000) // one pipeline's worth a tick
		batch = batch[:0]
		for ; r.next < due; r.next++ {
			i := int(r.next % int64(len(r.topics)))
			data, _ := json.Marshal(eventData{T: time.Now().UnixNano(), K: capacityBase + r.next})
			batch = append(batch, capEvent{r.topics[i], data})
			want += int64(r.subs[r.topics[i]])
			st.Events++
		}
		if err := r.publish(ctx, batch); err != nil {
			tick.Stop()
			return st, fmt.Errorf("publishing capacity events: %w", err)
		}
	}
	tick.Stop()
	took := time.Since(start)
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got, _, err := r.count(from)
		if err != nil {
			return st, err
		}
		if int64(got) >= want || time.Now().After(deadline) {
			break
		}
	}
	reports, err := ask[CapacityReport](r.workers, "capacity "+strconv.FormatInt(from, 10))
	if err != nil {
		return st, err
	}
	last := make([]uint64, st.Events)
	for _, rep := range reports {
		st.Receipts += rep.Received
		for i, us := range rep.Last {
			if i < len(last) {
				last[i] = max(last[i], us)
			}
		}
	}
	var h Histogram
	for _, us := range last {
		if us > 0 {
			h.Record(time.Duration(us-1) * time.Microsecond)
		}
	}
	st.Lost = want - int64(st.Receipts)
	st.LastP99 = h.Quantile(0.99)
	st.Delivered = float64(st.Receipts) / took.Seconds()
	progress(r.cfg, "capacity step: %.0f deliveries/s offered (%d events), %.0f/s received, last receipt p99 %v, lost %d, publisher behind %v",
		rate, st.Events, st.Delivered, st.LastP99, st.Lost, st.Behind)
	return st, r.settle(from)
}

// count sums the workers' receipts of events from on, and their open
// connections.
func (r *capacityRun) count(from int64) (received uint64, open int, err error) {
	reports, err := ask[CapacityReport](r.workers, "capcount "+strconv.FormatInt(from, 10))
	for _, rep := range reports {
		received += rep.Received
		open += rep.Open
	}
	return received, open, err
}

// settle waits, up to 10 s, until no more receipts of the step come (an
// overloaded server is still working off its queues), then has the
// workers dial any connection the server closed.
func (r *capacityRun) settle(from int64) error {
	var before uint64
	var open int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		got, n, err := r.count(from)
		if err != nil {
			return err
		}
		open = n
		if got == before || time.Now().After(deadline) {
			break
		}
		before = got
	}
	if open < r.conns {
		progress(r.cfg, "capacity: %d connections closed by the server; dialing them again", r.conns-open)
		return command(r.workers, "redial")
	}
	return nil
}
