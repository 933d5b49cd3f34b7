package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// sent is one XADD of a tolerantPublishing.
type sent struct {
	topic, data string
	id          string // "" when the XADD failed
	err         error
	phase       int32     // the publishing's phase when the XADD was sent
	at          time.Time // when Redis answered
}

// tolerantPublishing XADDs events round-robin over topics, as
// startPublishing does, through a Redis that may go away: a failed XADD is
// recorded and publishing goes on. A failure does not tell whether the
// entry was added (Redis may have run it and shut down before answering),
// so the XADDs go through a client of their own that never sends one
// again (go-redis would, after a connection error, and could add it
// twice), and every event carries unique data: the ingress tells
// afterwards which of the failed ones were added.
type tolerantPublishing struct {
	stop, done chan struct{}
	// phase is a mark the test moves (say, once Redis is back): each XADD
	// records the phase it was sent in.
	phase atomic.Int32
	mu    sync.Mutex
	sent  []sent
}

func startTolerantPublishing(tb testing.TB, addr string, keys streams.Keys, partitions int, topics []string) *tolerantPublishing {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	tb.Cleanup(func() { _ = rdb.Close() })
	return publishTolerantly(rdb, keys, partitions, topics)
}

// publishTolerantly is startTolerantPublishing through rdb, which must
// never send an XADD again (MaxRetries -1): a client of one server, or a
// failover client that follows Sentinel to whichever is master.
func publishTolerantly(rdb redis.UniversalClient, keys streams.Keys, partitions int, topics []string) *tolerantPublishing {
	pb := &tolerantPublishing{stop: make(chan struct{}), done: make(chan struct{})}
	bus := &bustest.Bus{Redis: rdb, Keys: keys, N: partitions}
	go func() {
		defer close(pb.done)
		for i := 0; ; i++ {
			select {
			case <-pb.stop:
				return
			default:
			}
			topic := topics[i%len(topics)]
			s := sent{topic: topic, data: strconv.Itoa(i), phase: pb.phase.Load()}
			s.id, s.err = bus.Add(context.Background(), topic, s.data)
			s.at = time.Now()
			pb.mu.Lock()
			pb.sent = append(pb.sent, s)
			pb.mu.Unlock()
			pause := time.Millisecond
			if s.err != nil {
				pause = 20 * time.Millisecond // Redis is away: do not spin
			}
			select {
			case <-pb.stop:
				return
			case <-time.After(pause):
			}
		}
	}()
	return pb
}

func (pb *tolerantPublishing) finish() []sent {
	close(pb.stop)
	<-pb.done
	return pb.sent
}

// entry is one ingress entry.
type entry struct{ id, data string }

// ingress reads every partition's ingress stream, by topic, in ID order;
// the gateways' own canary events (bus.CanaryPrefix) are left out.
func (f *fleet) ingress() map[string][]entry {
	f.tb.Helper()
	out := map[string][]entry{}
	for p := range fleetPartitions {
		msgs, err := f.pub.Redis.XRange(context.Background(), f.pub.Keys.Ingress(p), "-", "+").Result()
		if err != nil {
			f.tb.Fatalf("reading the ingress of partition %d: %v", p, err)
		}
		for _, m := range msgs {
			topic, _ := m.Values["topic"].(string)
			if bus.IsCanaryTopic(topic) {
				continue
			}
			data, _ := m.Values["data"].(string)
			out[topic] = append(out[topic], entry{id: m.ID, data: data})
		}
	}
	return out
}

// epochs reads every partition's epoch.
func (f *fleet) epochs() []string {
	f.tb.Helper()
	out := make([]string, fleetPartitions)
	for p := range out {
		v, err := f.pub.Redis.HGet(context.Background(), f.pub.Keys.PartitionMeta(p), "epoch").Result()
		if err != nil {
			f.tb.Fatalf("reading the epoch of partition %d: %v", p, err)
		}
		out[p] = v
	}
	return out
}

// published checks the ingress against what pb sent, every entry one of
// its events and every acknowledged event there under its ID, and returns
// the IDs by topic: what every client must have had.
func (f *fleet) published(all []sent) map[string][]string {
	f.tb.Helper()
	byData := map[string]sent{}
	for _, s := range all {
		byData[s.data] = s
	}
	out := map[string][]string{}
	found := map[string]bool{}
	landed := 0
	for topic, es := range f.ingress() {
		for _, e := range es {
			s, ok := byData[e.data]
			switch {
			case !ok || s.topic != topic:
				f.tb.Errorf("ingress entry %s (%s, data %q) is none of the events published", e.id, topic, e.data)
			case s.err == nil && s.id != e.id:
				f.tb.Errorf("event %s of %s is in the ingress as %s: added twice or renamed", s.id, topic, e.id)
			case s.err != nil:
				landed++
			}
			found[e.data] = true
			out[topic] = append(out[topic], e.id)
		}
	}
	failed, lost := 0, 0
	for _, s := range all {
		switch {
		case s.err != nil:
			failed++
		case !found[s.data]:
			lost++
			if lost <= 5 {
				f.tb.Errorf("event %s of %s, acknowledged by Redis, is not in the ingress: lost", s.id, s.topic)
			}
		}
	}
	if lost > 0 {
		f.tb.Errorf("%d acknowledged events lost", lost)
	}
	f.tb.Logf("%d XADDs, %d failed while Redis was away (%d of those were added nonetheless)", len(all), failed, landed)
	return out
}

// TestFaultRedisRestartWithAOF shuts Redis down (SHUTDOWN: it syncs its
// append-only file, written with appendfsync always) under load and
// starts it again on the same port and directory; the clients' connections
// drop while it is down, so they resume against gateways that cannot read
// history. Nothing acknowledged is lost: the partitions keep their epochs,
// and every client gets every event once, in order, every resume
// recovered.
func TestFaultRedisRestartWithAOF(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	fb := newFaultBus(t, srv, false)
	fb.startClients()
	epochs := fb.epochs()
	pb := startTolerantPublishing(t, srv.Addr, fb.pub.Keys, fleetPartitions, fb.topics)
	time.Sleep(time.Second) // load before the restart
	down := time.Now()
	srv.Shutdown(t)
	fb.dropClients()
	// Redis stays down longer than the gateways' Redis client retries
	// last (about a second), so resumes meet it gone.
	time.Sleep(1500 * time.Millisecond)
	srv.Restart(t)
	t.Logf("Redis was down for %v", time.Since(down).Round(10*time.Millisecond))
	time.Sleep(2 * time.Second) // load after the restart
	fb.verify(fb.published(pb.finish()))
	if after := fb.epochs(); !slices.Equal(after, epochs) {
		t.Errorf("epochs changed across a restart that lost nothing: %v, then %v", epochs, after)
	}
}

// TestFaultRedisRestartWithoutPersistence restarts Redis under load with
// neither RDB nor AOF: it comes back empty. Both gateways are held
// (SIGSTOP) for a moment before, so that events published then are
// acknowledged by Redis and never applied: the restart certainly loses
// acknowledged events, as a failover without persistence does. No client
// may miss them silently: each learns of the loss (a gap) before it is
// handed an event of the new data, and every resume from a cursor of the
// lost data is answered recovered:false with a new epoch. What is
// published after the restart reaches every client once, in order, and is
// in history with seq 1, 2, 3, ...
func TestFaultRedisRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Start(t) // no RDB, no AOF
	fb := newFaultBus(t, srv, false)
	var subs []*goSubscriber
	for i := range 4 {
		subs = append(subs, newGoSubscriber(t, fb.fleet, i))
	}
	pb := startTolerantPublishing(t, srv.Addr, fb.pub.Keys, fleetPartitions, fb.topics)
	time.Sleep(time.Second) // load before the restart
	oldEpochs := fb.epochs()
	gateways := []*gateway{fb.nodes["a"], fb.nodes["b"]}
	for _, g := range gateways {
		if err := g.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // publishing goes on; nothing is applied
	pb.phase.Store(1)
	srv.Shutdown(t)
	srv.Restart(t)
	pb.phase.Store(2) // from here XADDs go to the new, empty Redis
	for _, g := range gateways {
		if err := g.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	fb.waitBalanced(15*time.Second, "a", "b")
	time.Sleep(2 * time.Second) // load after the restart
	// A network drop: every client resumes, from a cursor of the lost data
	// unless it was told of the loss already.
	for _, s := range subs {
		s.drop()
	}
	time.Sleep(time.Second) // load while they resume
	all := pb.finish()

	newEpochs := fb.epochs()
	for p := range newEpochs {
		if newEpochs[p] == oldEpochs[p] {
			t.Errorf("partition %d kept its epoch %s through a restart that lost its data", p, oldEpochs[p])
		}
	}
	after := map[string][]string{} // the new data: what the ingress holds now
	for topic, es := range fb.ingress() {
		for _, e := range es {
			after[topic] = append(after[topic], e.id)
		}
	}
	before := map[string][]string{} // acknowledged by the Redis that was lost
	acked, kept, lost := 0, 0, 0
	for _, s := range all {
		switch {
		case s.err != nil:
		case s.phase == 0:
			acked++
			before[s.topic] = append(before[s.topic], s.id)
		case s.phase == 2 && !slices.Contains(after[s.topic], s.id):
			t.Errorf("event %s of %s, acknowledged after the restart, is not in the ingress", s.id, s.topic)
		case s.phase == 2:
			kept++
		}
	}
	for topic, ids := range before {
		for _, id := range ids {
			handed := false
			for _, s := range subs {
				handed = handed || slices.ContainsFunc(s.events(topic), func(e wsbus.Event) bool { return e.ID == id })
			}
			if !handed {
				lost++
			}
		}
	}
	t.Logf("%d events acknowledged before the restart, %d of them lost with it before any client had them; %d acknowledged after it",
		acked, lost, kept)
	if lost == 0 {
		t.Errorf("the restart lost no acknowledged event that clients had not had: the test did not test the loss")
	}
	fb.checkHistory(after)
	for i, s := range subs {
		s.verifyLoss(t, i, fb.topics, before, after, oldEpochs)
	}
}

// checkHistory checks that each topic's history holds the IDs of want,
// with seq 1, 2, 3, ...
func (f *fleet) checkHistory(want map[string][]string) {
	f.tb.Helper()
	for _, t := range f.topics {
		msgs, err := f.pub.Redis.XRange(context.Background(), f.pub.Keys.Topic(streams.Partition(t, fleetPartitions), t), "-", "+").Result()
		if err != nil {
			f.tb.Fatal(err)
		}
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
			if seq := m.Values["seq"]; seq != strconv.Itoa(i+1) {
				f.tb.Errorf("history entry %d of %s (%s) has seq %v, want %d: not contiguous", i, t, m.ID, seq, i+1)
			}
		}
		if !slices.Equal(ids, want[t]) {
			f.tb.Errorf("history of %s holds %d entries, want the %d published, each once", t, len(ids), len(want[t]))
		}
	}
}

// verifyLoss checks what client i handed for each topic across a restart
// that lost data: first events of the old data, a prefix of before, once
// each and in order with seq from 1; then a gap, before any event of
// after; and from its last gap on, every event of after once, in order,
// with seq from 1. Its first subscribed with a new epoch must be
// recovered:false. It waits until the client has had all of after.
func (s *goSubscriber) verifyLoss(tb testing.TB, i int, topics []string, before, after map[string][]string, oldEpochs []string) {
	tb.Helper()
	sinceLastGap := func(t string) []wsbus.Event {
		s.mu.Lock()
		defer s.mu.Unlock()
		var out []wsbus.Event
		for _, r := range s.log[t] {
			switch {
			case r.gap != nil:
				out = nil
			case r.event != nil:
				out = append(out, *r.event)
			}
		}
		return out
	}
	testutil.Eventually(tb, 30*time.Second, func() error {
		for _, t := range topics {
			if n := len(sinceLastGap(t)); n < len(after[t]) {
				return fmt.Errorf("Go client %d has %d of the %d events of %s since the restart", i, n, len(after[t]), t)
			}
		}
		return nil
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	var silentTopics []string
	silentExample := ""
	for _, t := range topics {
		oldEpoch := oldEpochs[streams.Partition(t, fleetPartitions)]
		isNew := map[string]bool{}
		for _, id := range after[t] {
			isNew[id] = true
		}
		var old []string
		var told, silent, resumed bool
		var last record
		for _, r := range s.log[t] {
			switch {
			case r.gap != nil:
				told = true
			case r.sub != nil && r.sub.Epoch != oldEpoch && !resumed:
				resumed = true
				if r.sub.Recovered {
					tb.Errorf("Go client %d, %s: the first resume after the restart was answered %v: want recovered:false", i, t, r)
				}
			case r.event != nil && isNew[r.event.ID]:
				// Checked below, from the last gap on.
				if !told && !silent {
					silent = true
					silentTopics = append(silentTopics, t)
					if silentExample == "" {
						silentExample = fmt.Sprintf("on %s it was handed %v, of the data after the restart, right after %v with no gap reported, though it never had %d events of the topic that Redis acknowledged before the restart and lost",
							t, r, last, countMissing(before[t], old))
					}
				}
			case r.event != nil && (told || silent):
				tb.Errorf("Go client %d, %s: handed %v, of the data before the restart, after the data after it", i, t, r)
			case r.event != nil:
				old = append(old, r.event.ID)
				if r.event.Seq != uint64(len(old)) {
					tb.Errorf("Go client %d, %s: event %s has seq %d, want %d", i, t, r.event.ID, r.event.Seq, len(old))
				}
			}
			if r.event != nil {
				last = r
			}
		}
		if len(old) > len(before[t]) || !slices.Equal(old, before[t][:len(old)]) {
			tb.Errorf("Go client %d, %s: before the restart handed %d events, not the first of the %d acknowledged, once each in order", i, t, len(old), len(before[t]))
		}
		if !told {
			tb.Errorf("Go client %d, %s: reported no gap after a restart that lost acknowledged events", i, t)
		}
		if !resumed {
			tb.Errorf("Go client %d, %s: no subscribed answer with a new epoch", i, t)
		}
		var ids []string
		for j, r := range s.log[t][lastGap(s.log[t]):] {
			if r.event == nil {
				continue
			}
			ids = append(ids, r.event.ID)
			if r.event.Seq != uint64(len(ids)) {
				tb.Errorf("Go client %d, %s: record %d after the last gap, %v, has seq %d, want %d", i, t, j, r, r.event.Seq, len(ids))
				break
			}
		}
		if !slices.Equal(ids, after[t]) {
			tb.Errorf("Go client %d, %s: after its last gap handed %d events, want the %d published after the restart, once each in order", i, t, len(ids), len(after[t]))
		}
	}
	if len(silentTopics) > 0 {
		tb.Errorf("Go client %d: silent gap on %d of %d topics (%v): %s", i, len(silentTopics), len(topics), silentTopics, silentExample)
	}
}

// lastGap is the index of the last gap in rs (0 when none).
func lastGap(rs []record) int {
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].gap != nil {
			return i
		}
	}
	return 0
}

// countMissing counts the IDs of want that got lacks: got is a prefix of want.
func countMissing(want, got []string) int { return max(0, len(want)-len(got)) }
