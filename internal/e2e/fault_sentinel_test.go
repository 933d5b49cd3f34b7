package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// The Sentinel fault tests run the bus on a master, one replica and three
// Sentinels (local processes; a master is failed over 1 s after it stops
// answering), with two gateways given the redis+sentinel:// URL and a
// publisher that is a go-redis failover client too. Redis replicates
// asynchronously, so a failover may lose writes the old master
// acknowledged. The tests do not decide beforehand what was lost; they
// read it from the new master afterwards (every event carries unique
// data) and check:
//
//   - what the new master holds is in history once, with seq 1, 2, 3, ...,
//     and every client ends with all of it, once each, in order;
//   - every gap a client meets is one the server reported (recovered:false,
//     then everything retained): never a hole in seq the client has to
//     find for itself;
//   - a client handed an event that the new master lost is on a partition
//     whose epoch was renewed, and resumes under the new epoch
//     recovered:false: a partition whose epoch stayed delivered nothing
//     that was lost;
//   - once a write reached the new master, nothing acknowledged after it
//     is lost (writes resumed there for good).
//
// An acknowledged event lost before any owner read it was never an event
// of the bus: no client had it and no gateway can know of it (only the
// publisher can, with WAIT). The tests count such events with the others
// lost and do not fail on them.

// sentinelBus is a faultBus on a Sentinel deployment.
type sentinelBus struct {
	*faultBus
	st *redistest.Sentinel
}

// newSentinelBus starts a master, a replica and three Sentinels, gateways
// a and b through the Sentinels, and waits until they share the
// partitions.
func newSentinelBus(tb testing.TB) *sentinelBus {
	tb.Helper()
	st := redistest.StartSentinel(tb, 1, 3)
	f := &fleet{tb: tb, redis: st.URL(), prefix: redistest.Prefix(tb), nodes: map[string]*gateway{}, topics: fleetTopics()}
	sb := &sentinelBus{faultBus: &faultBus{fleet: f, proxies: map[string]*proxy{}}, st: st}
	for _, name := range []string{"a", "b"} {
		sb.startOn(name, st.URL())
	}
	f.pub = publisherOn(tb, sb.failoverClient(0), f.prefix) // the bus is migrated now
	// The clients stop before the gateways do (cleanups run last first).
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	f.ctx = ctx
	sb.waitBalanced(10*time.Second, "a", "b")
	return sb
}

// failoverClient returns a go-redis failover client of the Sentinels'
// master, closed at the end of the test; maxRetries -1 never sends a
// command again.
func (sb *sentinelBus) failoverClient(maxRetries int) *redis.Client {
	sb.tb.Helper()
	var addrs []string
	for _, s := range sb.st.Sentinels {
		addrs = append(addrs, s.Addr)
	}
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: redistest.MasterName, SentinelAddrs: addrs, MaxRetries: maxRetries})
	sb.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// publish starts publishing over every partition through a failover
// client of its own that never sends an XADD twice.
func (sb *sentinelBus) publish() *tolerantPublishing {
	return publishTolerantly(sb.failoverClient(-1), sb.pub.Keys, fleetPartitions, sb.topics)
}

// awaitWrites waits until an XADD that pb sent in phase 2 or later, and
// Redis acknowledged, is in the ingress of master, and returns its index
// among pb's XADDs: the publisher writes to the new master from there on.
func (sb *sentinelBus) awaitWrites(pb *tolerantPublishing, master string) int {
	sb.tb.Helper()
	c := sb.st.Server(master).Client(sb.tb)
	from, at := 0, -1
	testutil.Eventually(sb.tb, 20*time.Second, func() error {
		pb.mu.Lock()
		sends := pb.sent[from:]
		pb.mu.Unlock()
		for j, s := range sends {
			if s.phase < 2 || s.err != nil {
				continue
			}
			n, err := c.XRange(context.Background(), sb.pub.Keys.Ingress(streams.Partition(s.topic, fleetPartitions)), s.id, s.id).Result()
			if err != nil {
				return fmt.Errorf("reading the new master %s: %w", master, err)
			}
			if len(n) == 1 {
				at = from + j
				return nil
			}
		}
		from += len(sends)
		return fmt.Errorf("no XADD acknowledged since the failover is on the new master %s yet", master)
	})
	return at
}

// failover is what a Redis failover under load did to the events
// published.
type failover struct {
	kept     map[string][]string // by topic: the IDs the new master holds, what every client must end with
	byData   map[string]sent     // every XADD, by its unique data
	lost     map[string]bool     // data of the acknowledged events the new master does not hold
	old, now []string            // every partition's epoch before and after
	renewed  map[int]bool        // partitions whose epoch changed
	resumed  sent                // the first XADD found on the new master
}

// outcome reads what the new master holds and sorts what pb sent by it.
// Every ingress entry must be one of the events sent, under the ID it was
// acknowledged with, and none acknowledged from the resumed-th XADD on may
// be lost.
func (sb *sentinelBus) outcome(all []sent, resumed int, oldEpochs []string) *failover {
	sb.tb.Helper()
	fo := &failover{kept: map[string][]string{}, byData: map[string]sent{}, lost: map[string]bool{},
		old: oldEpochs, now: sb.epochs(), renewed: map[int]bool{}, resumed: all[resumed]}
	for _, s := range all {
		fo.byData[s.data] = s
	}
	found := map[string]bool{}
	landed := 0
	for topic, es := range sb.ingress() {
		for _, e := range es {
			s, ok := fo.byData[e.data]
			switch {
			case !ok || s.topic != topic:
				sb.tb.Errorf("ingress entry %s (%s, data %q) is none of the events published", e.id, topic, e.data)
			case s.err == nil && s.id != e.id:
				sb.tb.Errorf("event %s of %s is in the ingress as %s: added twice or renamed", s.id, topic, e.id)
			case s.err != nil:
				landed++
			}
			found[e.data] = true
			fo.kept[topic] = append(fo.kept[topic], e.id)
		}
	}
	failed := 0
	lostIn, lostInPhase := map[int]int{}, map[int32]int{}
	for j, s := range all {
		switch {
		case s.err != nil:
			failed++
		case found[s.data]:
		case j >= resumed:
			sb.tb.Errorf("event %s of %s, acknowledged after writes resumed on the new master, is lost", s.id, s.topic)
		default:
			fo.lost[s.data] = true
			lostIn[streams.Partition(s.topic, fleetPartitions)]++
			lostInPhase[s.phase]++
		}
	}
	for p := range fo.now {
		if fo.now[p] != fo.old[p] {
			fo.renewed[p] = true
		}
	}
	sb.tb.Logf("%d XADDs: %d failed during the failover (%d of those were added nonetheless), %d acknowledged and lost by it (by phase %v, by partition %v); epochs renewed on partitions %v",
		len(all), failed, landed, len(fo.lost), lostInPhase, lostIn, slices.Sorted(maps.Keys(fo.renewed)))
	for _, name := range slices.Sorted(maps.Keys(sb.nodes)) {
		var ps []string
		for _, line := range strings.Split(sb.nodes[name].log.String(), "\n") {
			if _, after, ok := strings.Cut(line, "epoch renewed\" partition="); ok {
				p, _, _ := strings.Cut(after, " ")
				ps = append(ps, p)
			}
		}
		sb.tb.Logf("gateway %s renewed the epochs of partitions %v", name, ps)
	}
	return fo
}

// maxLiveDelay bounds how long an event acknowledged by the new master
// may take to reach a client: well above what the gateways take to move
// to it (under a second), well below Sentinel's 10 s.
const maxLiveDelay = 5 * time.Second

// check checks history against what the new master holds and every
// client against fo, and returns how many lost events the Go clients had
// been handed. It logs how long events the new master acknowledged took
// to reach each Go client, and fails the test if any took longer than
// maxLiveDelay: a gateway whose live channels stayed on the old master
// hears nothing until Sentinel makes it a replica, 10 to 20 s later.
func (sb *sentinelBus) check(fo *failover) (handedLost int) {
	sb.tb.Helper()
	start := time.Now()
	sb.checkHistory(fo.kept)
	for i, s := range sb.gos {
		handedLost += s.verifyFailover(sb.tb, i, sb.topics, fo)
	}
	for i, r := range sb.raw {
		r.verifyFailover(sb.tb, i, sb.topics, fo)
	}
	n := 0
	for _, ids := range fo.kept {
		n += len(ids)
	}
	// How long events acknowledged by the new master took to reach each
	// Go client: the first one, and the slowest.
	var first, slowest []time.Duration
	for _, s := range sb.gos {
		s.mu.Lock()
		var worst time.Duration
		for _, rs := range s.log {
			for _, r := range rs {
				sn, ok := sent{}, false
				if r.event != nil {
					sn, ok = fo.byData[string(r.event.Data)]
				}
				if !ok || sn.err != nil || sn.at.Before(fo.resumed.at) {
					continue
				}
				if sn.id == fo.resumed.id {
					first = append(first, r.at.Sub(sn.at).Round(10*time.Millisecond))
				}
				worst = max(worst, r.at.Sub(sn.at).Round(10*time.Millisecond))
			}
		}
		slowest = append(slowest, worst)
		s.mu.Unlock()
	}
	sb.tb.Logf("%d events kept over %d topics: every client had them all %v after publishing stopped; the events the new master acknowledged reached the Go clients after %v for the first, %v at most",
		n, len(sb.topics), time.Since(start).Round(10*time.Millisecond), first, slowest)
	if worst := slices.Max(slowest); worst > maxLiveDelay {
		sb.tb.Errorf("an event acknowledged by the new master took %v to reach a Go client, more than %v", worst, maxLiveDelay)
	}
	sb.tb.Logf("epochs renewed on %d of %d partitions; the Go clients had been handed %d events that were lost",
		len(fo.renewed), fleetPartitions, handedLost)
	return handedLost
}

// verifyFailover waits until Go client i has been handed, on every topic,
// the last event the new master holds, then checks its log of each topic
// against fo (see checkFailover), telling the first problem of each of
// a few topics. It returns how many events it was handed that the new
// master lost.
func (s *goSubscriber) verifyFailover(tb testing.TB, i int, topics []string, fo *failover) (handedLost int) {
	tb.Helper()
	err := testutil.Poll(30*time.Second, func() error {
		for _, t := range topics {
			es := s.events(t)
			if n := len(fo.kept[t]); n > 0 && (len(es) == 0 || es[len(es)-1].ID != fo.kept[t][n-1]) {
				s.mu.Lock()
				defer s.mu.Unlock()
				return fmt.Errorf("Go client %d has not had the last event of %s, %s; its log of the topic ends %v",
					i, t, fo.kept[t][n-1], lastRecords(s.log[t], 5))
			}
		}
		return nil
	})
	if err != nil {
		tb.Error(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var failed []string
	for _, t := range topics {
		lost, problems := s.checkFailover(t, fo)
		handedLost += lost
		if len(problems) == 0 {
			continue
		}
		failed = append(failed, t)
		if len(failed) <= 3 {
			p := streams.Partition(t, fleetPartitions)
			tb.Errorf("Go client %d, %s (partition %d, epoch %s, after the failover %s): %s (and %d more problems)",
				i, t, p, fo.old[p], fo.now[p], problems[0], len(problems)-1)
		}
	}
	if len(failed) > 0 {
		tb.Errorf("Go client %d: problems on %d of %d topics: %v", i, len(failed), len(topics), failed)
	}
	return handedLost
}

// checkFailover checks the client's log of topic t against fo:
//
//   - every event one that was published to the topic, under the ID it was
//     acknowledged with;
//   - no hole in seq that the client had to find for itself (a silent gap);
//   - between the gaps the server reported (recovered:false), seq n, n+1,
//     n+2, ...: a resume that is not recovered is sent everything retained
//     (a new epoch), or what follows its cursor;
//   - since its last gap, exactly the events the new master holds after
//     the last event handed before it (the client drops what sorts at or
//     below its cursor: it had those), and each of the others handed
//     before the gap;
//   - a lost event handed only on a partition whose epoch was renewed, and
//     later a resume under the new epoch;
//   - the first resume under a new epoch recovered:false, and none
//     recovered:true under an epoch other than the one before.
//
// It returns how many events it was handed that the new master lost, and
// what it found wrong, in order.
func (s *goSubscriber) checkFailover(t string, fo *failover) (handedLost int, problems []string) {
	p := streams.Partition(t, fleetPartitions)
	log := s.log[t]
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var seg []string            // the events since the last gap
	var seq uint64              // the seq of seg's last
	var cursor streams.ID       // the newest event handed before the last gap the server reported
	var last streams.ID         // the newest event handed
	handed := map[string]bool{} // every event handed
	restart := false            // a gap was reported: the next event may have any seq
	epoch, gaps, firstLost, resumedNew := "", 0, -1, -1
	for j, r := range log {
		switch {
		case r.sub != nil:
			if r.sub.Recovered && epoch != "" && r.sub.Epoch != epoch {
				bad("%v: recovered under an epoch other than the one before, %s", r, epoch)
			}
			if r.sub.Epoch != fo.old[p] && resumedNew < 0 {
				resumedNew = j
				if r.sub.Recovered && j > 0 {
					bad("the first resume under a new epoch was answered %v: want recovered:false", r)
				}
			}
			epoch = r.sub.Epoch
		case r.gap != nil && (r.gap.After != 0 || r.gap.Seq != 0):
			// The client goes on from the event after the hole.
			bad("%v: a hole in seq that the server did not report (a silent gap), which the client found by itself; around it: %v", r, around(log, j))
			gaps++
			seg, seq = nil, r.gap.Seq-1
		case r.gap != nil:
			// Reported by the server: what follows starts anew, from seq 1
			// (everything retained) or after the cursor (a cursor whose
			// seq does not lead there, under an epoch not yet renewed).
			gaps++
			seg, seq, restart, cursor = nil, 0, true, last
		case r.event != nil:
			sn, ok := fo.byData[string(r.event.Data)]
			switch {
			case !ok || sn.topic != t:
				bad("%v has data %s, none of the events published to the topic", r, r.event.Data)
			case sn.err == nil && sn.id != r.event.ID:
				bad("%v is event %s, under another ID", r, sn.id)
			}
			if fo.lost[string(r.event.Data)] {
				handedLost++
				if firstLost < 0 {
					firstLost = j
				}
			}
			if r.event.Seq != seq+1 && !restart {
				bad("%v after seq %d: not contiguous; around it: %v", r, seq, around(log, j))
			}
			seg, seq, restart = append(seg, r.event.ID), r.event.Seq, false
			handed[r.event.ID] = true
			if id := streams.MustParseID(r.event.ID); last.Less(id) {
				last = id
			}
		}
	}
	if firstLost >= 0 && !fo.renewed[p] {
		bad("handed %d events that Redis lost (the first: %v), and the epoch was not renewed; around the first: %v",
			handedLost, log[firstLost], around(log, firstLost))
	}
	if firstLost >= 0 && fo.renewed[p] && resumedNew < firstLost {
		bad("handed %d events that Redis lost (the first: %v), and never resumed under the new epoch after", handedLost, log[firstLost])
	}
	var after []string // what the new master holds after the cursor
	for _, id := range fo.kept[t] {
		switch {
		case cursor.Less(streams.MustParseID(id)):
			after = append(after, id)
		case !handed[id]:
			bad("event %s, which the new master holds at or below the cursor %s of the last gap, was never handed", id, cursor)
		}
	}
	if !slices.Equal(seg, after) {
		bad("since its last gap (%d) handed %d events, not the %d the new master holds after %s, once each in order; its log ends %v",
			gaps, len(seg), len(after), cursor, lastRecords(log, 5))
	}
	return handedLost, problems
}

// around is what rs holds around its j-th record, for a message.
func around(rs []record, j int) []record { return rs[max(0, j-3):min(len(rs), j+4)] }

// verifyFailover waits until raw client i has had, on every topic, the
// last event the new master holds. On a partition whose epoch stayed it
// must have had exactly those events, once each in order, every resume
// recovered; on a renewed one it was sent everything retained again after
// its resume was answered recovered:false, and must end with all of it
// (the Go clients check the rest).
func (r *resumer) verifyFailover(tb testing.TB, i int, topics []string, fo *failover) {
	tb.Helper()
	err := testutil.Poll(30*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, t := range topics {
			if n := len(fo.kept[t]); n > 0 && (len(r.got[t]) == 0 || r.got[t][len(r.got[t])-1] != fo.kept[t][n-1]) {
				return fmt.Errorf("raw client %d has not had the last event of %s, %s", i, t, fo.kept[t][n-1])
			}
		}
		return nil
	})
	if err != nil {
		tb.Error(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := map[string]bool{}
	for _, ids := range fo.kept {
		for _, id := range ids {
			kept[id] = true
		}
	}
	var problems []string
	for _, t := range topics {
		p := streams.Partition(t, fleetPartitions)
		got, want := r.got[t], fo.kept[t]
		switch {
		case fo.renewed[p] && (len(got) < len(want) || !slices.Equal(got[len(got)-len(want):], want)):
			problems = append(problems, fmt.Sprintf("%s (partition %d, epoch renewed): %d events received, not ending with the %d the new master holds", t, p, len(got), len(want)))
		case !fo.renewed[p] && !slices.Equal(got, want):
			gone := slices.DeleteFunc(slices.Clone(got), func(id string) bool { return kept[id] })
			problems = append(problems, fmt.Sprintf("%s (partition %d, epoch %s throughout): %d events received, %d kept, not each once in order; %d received are not on the new master (%v)",
				t, p, fo.now[p], len(got), len(want), len(gone), gone[:min(len(gone), 3)]))
		case !fo.renewed[p] && r.notRecoveredBy[t] > 0:
			problems = append(problems, fmt.Sprintf("%s (partition %d, epoch %s throughout): %d resumes not recovered", t, p, fo.now[p], r.notRecoveredBy[t]))
		}
	}
	for _, pr := range r.problems {
		t, _, _ := strings.Cut(pr, ":")
		if !slices.Contains(topics, t) || !fo.renewed[streams.Partition(t, fleetPartitions)] {
			problems = append(problems, pr)
		}
	}
	if len(problems) > 0 {
		tb.Errorf("raw client %d: %d problems, the first %v", i, len(problems), problems[:min(len(problems), 3)])
	}
}

// TestFaultSentinelFailover asks the Sentinels for a failover (SENTINEL
// FAILOVER) under load: the replica, in sync, is promoted, and the
// gateways, the publisher and the clients' resumes go on against it.
//
// A planned failover loses writes too: Sentinel promotes the replica
// (REPLICAOF NO ONE) without stopping the old master, which stays a
// master, acknowledging the writes of every client not yet told of the
// switch, until Sentinel makes it a replica of the new one 10 to 20 s
// later and it drops them. go-redis's failover clients move when Sentinel
// announces the new master (+switch-master), after its next INFO of the
// promoted replica (once a second): about a second of writes, which the
// owners apply and the gateways deliver, goes to the old master. The test does not
// assume that nothing is lost; it checks that what was lost and had been
// delivered is reported through the epoch.
func TestFaultSentinelFailover(t *testing.T) {
	sb := newSentinelBus(t)
	sb.startClients()
	oldEpochs := sb.epochs()
	pb := sb.publish()
	time.Sleep(time.Second) // load before the failover
	pb.phase.Store(1)
	begun := time.Now()
	master := sb.st.Failover(t)
	t.Logf("SENTINEL FAILOVER: every Sentinel names the new master %s after %v", master, time.Since(begun).Round(10*time.Millisecond))
	pb.phase.Store(2)
	sb.dropClients()
	resumed := sb.awaitWrites(pb, master)
	t.Logf("writes reached the new master %v after the failover began", time.Since(begun).Round(10*time.Millisecond))
	sb.settle(pb, resumed, oldEpochs)
}

// settle ends a failover test: once the gateways share the partitions
// again, load runs a while, every client resumes against the new
// master's data, and the outcome is checked (see check).
func (sb *sentinelBus) settle(pb *tolerantPublishing, resumed int, oldEpochs []string) (handedLost int) {
	sb.tb.Helper()
	sb.waitBalanced(20*time.Second, "a", "b")
	time.Sleep(2 * time.Second)        // load after the failover
	sb.dropClients()                   // every client resumes against the new master's data
	time.Sleep(500 * time.Millisecond) // load while they resume
	return sb.check(sb.outcome(pb.finish(), resumed, oldEpochs))
}

// TestFaultSentinelMasterKilled SIGKILLs the master under load; the
// Sentinels promote the replica about a second later. The replica is held
// (SIGSTOP) for a moment before, so the master acknowledges writes it has
// not replicated and loses them with the crash, as a lagging replica
// makes it do.
func TestFaultSentinelMasterKilled(t *testing.T) {
	sb := newSentinelBus(t)
	sb.startClients()
	oldEpochs := sb.epochs()
	pb := sb.publish()
	time.Sleep(time.Second) // load before the crash
	old := sb.st.Master(t)
	var replica *redistest.Server
	for _, s := range sb.st.Servers {
		if s.Addr != old {
			replica = s
		}
	}
	replica.Pause(t)
	// What the master sends the held replica first fills the kernel's
	// socket buffers, which the replica still reads once it runs again:
	// a large write fills them and keeps everything after it in the
	// master's own output buffer, which dies with it.
	ballast := sb.st.Server(old).Client(t)
	if err := ballast.Set(context.Background(), sb.prefix+":ballast", strings.Repeat("x", 32<<20), 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Load the replica does not get, for less than Sentinel's 1 s: the
	// replica is not marked down, and stays a candidate.
	time.Sleep(500 * time.Millisecond)
	pb.phase.Store(1)
	begun := time.Now()
	sb.st.KillMaster(t)
	replica.Continue(t)
	sb.dropClients()
	master := sb.st.AwaitMaster(t, old)
	t.Logf("SIGKILL: every Sentinel names the new master %s after %v", master, time.Since(begun).Round(10*time.Millisecond))
	pb.phase.Store(2)
	resumed := sb.awaitWrites(pb, master)
	t.Logf("writes reached the new master %v after the crash", time.Since(begun).Round(10*time.Millisecond))
	if sb.settle(pb, resumed, oldEpochs) == 0 {
		t.Errorf("no client had been handed an event that the crash lost: the test did not test the loss")
	}
}
