package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
)

// The fault tests break what lies between the gateways and Redis while
// events are published to every partition, and check that once the fault
// is gone every client has had every event once, in order, and that
// history holds each once with seq contiguous. Each runs two gateway
// processes (a and b, lease TTL fleetTTL) and four clients subscribed to
// every topic: on each gateway, a wsbus Go client (clients/go: what
// applications use; it hides a duplicate from the application, so it
// would not show one) and a raw resumer (fleet_test.go: it sees every
// frame, so a duplicate or a step back within a connection shows). In the
// middle of each fault every client's connection is dropped, so that
// resumes are served while Redis is out of reach (after it, for a Redis
// restarted without persistence: fault_restart_test.go).

// faultBus is the bus of a fault test.
type faultBus struct {
	*fleet
	proxies map[string]*proxy // by node, when the gateways go through toxiproxy
	raw     []*resumer
	gos     []*goSubscriber
}

// newFaultBus starts gateways a and b on srv (each through a toxiproxy
// proxy of its own when proxied; the publisher always goes straight to
// Redis) and waits until they share the partitions.
func newFaultBus(tb testing.TB, srv *redistest.Server, proxied bool) *faultBus {
	tb.Helper()
	f := &fleet{tb: tb, redis: srv.URL(), prefix: redistest.Prefix(tb), nodes: map[string]*gateway{}, topics: fleetTopics()}
	fb := &faultBus{fleet: f, proxies: map[string]*proxy{}}
	var tp *toxiproxy
	if proxied {
		tp = startToxiproxy(tb)
	}
	for _, name := range []string{"a", "b"} {
		url := srv.URL()
		if proxied {
			fb.proxies[name] = tp.proxy(name, srv.Addr)
			url = fb.proxies[name].url()
		}
		fb.startOn(name, url)
	}
	f.pub = publisherOn(tb, srv.Client(tb), f.prefix) // the bus is migrated now
	// The clients stop before the gateways do (cleanups run last first).
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	fb.ctx = ctx
	fb.waitBalanced(10*time.Second, "a", "b")
	return fb
}

// startClients starts a raw resumer and a Go client on each gateway.
func (fb *faultBus) startClients() {
	fb.tb.Helper()
	fb.raw = fb.clients(1)
	for _, r := range fb.raw {
		r.retry = true
	}
	for i := range 2 {
		fb.gos = append(fb.gos, newGoSubscriber(fb.tb, fb.fleet, i))
	}
}

// dropClients closes every client's connection, as a network drop would:
// each reconnects (to the next gateway) and resumes every topic.
func (fb *faultBus) dropClients() {
	for _, r := range fb.raw {
		r.drop()
	}
	for _, s := range fb.gos {
		s.drop()
	}
}

// toxic adds the same toxic to both directions of every proxy.
func (fb *faultBus) toxic(typ string, attributes map[string]int) {
	for _, p := range fb.proxies {
		p.toxic(typ, "downstream", attributes)
		p.toxic(typ, "upstream", attributes)
	}
}

// removeToxic takes the toxic of type typ away from both directions of
// every proxy.
func (fb *faultBus) removeToxic(typ string) {
	for _, p := range fb.proxies {
		p.remove(typ, "downstream")
		p.remove(typ, "upstream")
	}
}

// behind logs how far the slowest client is behind what pb has published
// so far: the fault's effect, for the record.
func (fb *faultBus) behind(pb *publishing, when string) {
	pb.mu.Lock()
	published := 0
	for _, ids := range pb.ids {
		published += len(ids)
	}
	pb.mu.Unlock()
	fewest := published
	for _, r := range fb.raw {
		r.mu.Lock()
		n := 0
		for _, ids := range r.got {
			n += len(ids)
		}
		r.mu.Unlock()
		fewest = min(fewest, n)
	}
	for _, s := range fb.gos {
		fewest = min(fewest, s.count())
	}
	fb.tb.Logf("%s: %d events published, the slowest client has %d", when, published, fewest)
}

// verify waits until every client has every published event and checks
// each has them once, in order, with seq contiguous and every resume
// recovered, and history holds each once. It logs how long the clients
// took to converge.
func (fb *faultBus) verify(published map[string][]string) {
	fb.tb.Helper()
	start := time.Now()
	for i, s := range fb.gos {
		s.verify(fb.tb, i, fb.topics, published)
	}
	fb.fleet.verify(published, fb.raw)
	n, unavailable := 0, 0
	for _, ids := range published {
		n += len(ids)
	}
	for _, r := range fb.raw {
		r.mu.Lock()
		unavailable += r.unavailable
		r.mu.Unlock()
	}
	for _, s := range fb.gos {
		s.mu.Lock()
		unavailable += s.unavailable
		s.mu.Unlock()
	}
	fb.tb.Logf("%d events over %d topics: every client had them all %v after publishing stopped; %d subscriptions answered unavailable and retried",
		n, len(fb.topics), time.Since(start).Round(10*time.Millisecond), unavailable)
}

// goSubscriber is a wsbus Go client subscribed to every topic from the
// start ("0"), recording, by topic, what it hands the application in
// order. Its dialer goes to the next gateway on each connection and
// keeps the connection, so a test can drop it.
type goSubscriber struct {
	c *wsbus.Client

	mu          sync.Mutex
	conn        net.Conn
	log         map[string][]record // by topic
	errors      []wsbus.Message     // error messages other than unavailable
	unavailable int                 // subscriptions refused as unavailable
	dials       int
}

// record is one thing a subscription handed the application: an event, a
// gap or a subscribed answer.
type record struct {
	at    time.Time
	event *wsbus.Event
	gap   *wsbus.Gap
	sub   *wsbus.Subscribed
}

func (r record) String() string {
	at := r.at.Format("15:04:05.000")
	switch {
	case r.event != nil:
		return fmt.Sprintf("%s event %s seq %d", at, r.event.ID, r.event.Seq)
	case r.gap != nil:
		missed := "?"
		if r.gap.Missed != nil {
			missed = fmt.Sprint(*r.gap.Missed)
		}
		return fmt.Sprintf("%s gap (missed %s, after seq %d, seq %d)", at, missed, r.gap.After, r.gap.Seq)
	default:
		return fmt.Sprintf("%s subscribed recovered=%v epoch %s head %s seq %d", at, r.sub.Recovered, r.sub.Epoch, r.sub.Head, r.sub.Seq)
	}
}

// newGoSubscriber starts a Go client on gateway first (by name order) of
// f, subscribed to all of f's topics, until the test ends.
func newGoSubscriber(tb testing.TB, f *fleet, first int) *goSubscriber {
	tb.Helper()
	s := &goSubscriber{log: map[string][]record{}, dials: first}
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		s.mu.Lock()
		n := s.dials
		s.dials++
		s.mu.Unlock()
		addrs := f.addrs()
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addrs[n%len(addrs)])
		if err == nil {
			s.mu.Lock()
			s.conn = conn
			s.mu.Unlock()
		}
		return conn, err
	}
	s.c = wsbus.New("ws://gateway/v1/ws", wsbus.Options{
		NetDial: dial, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		OnError: func(m wsbus.Message) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if m.Code == "unavailable" {
				s.unavailable++
				return
			}
			s.errors = append(s.errors, m)
		},
	})
	for _, t := range f.topics {
		s.c.Subscribe(t, wsbus.SubscribeOptions{
			Since:        "0",
			OnEvent:      func(e wsbus.Event) { s.add(t, record{event: &e}) },
			OnGap:        func(g wsbus.Gap) { s.add(t, record{gap: &g}) },
			OnSubscribed: func(sub wsbus.Subscribed) { s.add(t, record{sub: &sub}) },
		})
	}
	runClient(tb, s.c)
	return s
}

func (s *goSubscriber) add(topic string, r record) {
	r.at = time.Now()
	s.mu.Lock()
	s.log[topic] = append(s.log[topic], r)
	s.mu.Unlock()
}

// drop closes the client's connection; it reconnects and resumes.
func (s *goSubscriber) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// events returns the events handed for topic, in order.
func (s *goSubscriber) events(topic string) []wsbus.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []wsbus.Event
	for _, r := range s.log[topic] {
		if r.event != nil {
			out = append(out, *r.event)
		}
	}
	return out
}

// count is how many events the client has handed, over all topics.
func (s *goSubscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, rs := range s.log {
		for _, r := range rs {
			if r.event != nil {
				n++
			}
		}
	}
	return n
}

// verify waits until client i has handed as many events of every topic
// as were published, then checks they are those, once each, in order,
// with seq 1, 2, 3, ..., with every subscription recovered, no gap and no
// error.
func (s *goSubscriber) verify(tb testing.TB, i int, topics []string, published map[string][]string) {
	tb.Helper()
	testutil.Eventually(tb, 30*time.Second, func() error {
		for _, t := range topics {
			if n := len(s.events(t)); n < len(published[t]) {
				s.mu.Lock()
				defer s.mu.Unlock()
				return fmt.Errorf("Go client %d has %d of %d events of %s (%d subscriptions answered unavailable; its log of the topic: %v)",
					i, n, len(published[t]), t, s.unavailable, lastRecords(s.log[t], 5))
			}
		}
		return nil
	})
	for _, t := range topics {
		var ids []string
		for j, e := range s.events(t) {
			ids = append(ids, e.ID)
			if e.Seq != uint64(j+1) {
				tb.Errorf("Go client %d, %s: event %d (%s) has seq %d, want %d", i, t, j, e.ID, e.Seq, j+1)
				break
			}
		}
		if !slices.Equal(ids, published[t]) {
			tb.Errorf("Go client %d, %s: handed %d events, %d published: not each once in order", i, t, len(ids), len(published[t]))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range slices.Sorted(maps.Keys(s.log)) {
		for _, r := range s.log[t] {
			if r.gap != nil || r.sub != nil && !r.sub.Recovered {
				tb.Errorf("Go client %d, %s: %v", i, t, r)
			}
		}
	}
	if len(s.errors) > 0 {
		tb.Errorf("Go client %d: errors from the gateways: %+v", i, s.errors)
	}
}

// lastRecords is the last n of rs, for a message.
func lastRecords(rs []record, n int) []record { return rs[max(0, len(rs)-n):] }

// addrs returns the nodes' addresses, by name.
func (f *fleet) addrs() []string {
	var out []string
	for _, u := range f.urls() {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(u, "ws://"), "/v1/ws"))
	}
	return out
}

// TestFaultLatency puts 50 ms of latency, with 50 ms of jitter, on every
// byte between the gateways and Redis, both ways: every Redis round trip
// of the owners' pipelines, lease renewals, pub/sub and resumes takes 0 to
// 200 ms. Events are delayed, none is lost or repeated.
func TestFaultLatency(t *testing.T) {
	underToxic(t, "latency", map[string]int{"latency": 50, "jitter": 50}, "after 4 s of latency")
}

// TestFaultSlowRedisKeepsLeases makes every Redis round trip of both
// gateways take 600 ms (300 ms of latency each way) for 6 s, three lease
// TTLs: slow enough that a node doing its heartbeat, renewals and
// rebalance one after another in each tick would renew a lease only every
// three round trips and a tick (2.3 s, past the 2 s TTL), as a gateway on
// a loaded machine does. Renewals do not wait for the rest of a tick, so
// no lease is lost: the partitions stay where they are, and nothing is
// lost or repeated.
func TestFaultSlowRedisKeepsLeases(t *testing.T) {
	fb := newFaultBus(t, redistest.Start(t), true)
	fb.startClients()
	pb := fb.publish()
	time.Sleep(time.Second) // load before the fault
	before := fb.owners()
	fb.toxic("latency", map[string]int{"latency": 300})
	time.Sleep(3 * time.Second)
	fb.dropClients()
	time.Sleep(3 * time.Second)
	fb.behind(pb, "after 6 s of 600 ms round trips")
	lost := 0
	for _, name := range []string{"a", "b"} {
		lost += metric(t, fb.nodes[name], "wsbus_bus_leases_lost_total")
	}
	after := fb.owners()
	fb.removeToxic("latency")
	if lost != 0 || !slices.Equal(before, after) {
		t.Errorf("under 600 ms round trips %d leases were lost; owners before %v, after %v", lost, before, after)
	}
	time.Sleep(time.Second) // load after the fault
	fb.verify(pb.finish())
}

// underToxic runs the bus under load with a toxic on every gateway's
// Redis connections for 4 s, the clients dropped half-way so that they
// resume under it, then without it, and checks every client got every
// event once, in order.
func underToxic(t *testing.T, typ string, attributes map[string]int, what string) {
	t.Helper()
	fb := newFaultBus(t, redistest.Start(t), true)
	fb.startClients()
	pb := fb.publish()
	time.Sleep(time.Second) // load before the fault
	fb.toxic(typ, attributes)
	time.Sleep(2 * time.Second) // the fault lasts 4 s: clients dropped half-way
	fb.dropClients()
	time.Sleep(2 * time.Second) // the rest of the fault, which the resumes run under
	fb.behind(pb, what)
	fb.removeToxic(typ)
	time.Sleep(time.Second) // load after the fault
	fb.verify(pb.finish())
}

// TestFaultStall stalls what Redis sends both gateways for 6 s, three
// lease TTLs (a timeout toxic with no timeout: replies and pub/sub
// messages are dropped; removing it closes the connections). Their
// commands still reach Redis and run, so an apply that wrote history and
// published can look failed to its owner; renewals time out; the leases
// lapse and are taken again. The clients resume early in the stall, so
// their history reads outlast the gateways' Redis timeouts (3 s) and are
// answered unavailable. When the stall ends every client gets what it
// missed, once.
func TestFaultStall(t *testing.T) {
	fb := newFaultBus(t, redistest.Start(t), true)
	fb.startClients()
	pb := fb.publish()
	time.Sleep(time.Second) // load before the fault
	for _, p := range fb.proxies {
		p.toxic("timeout", "downstream", map[string]int{"timeout": 0})
	}
	time.Sleep(500 * time.Millisecond) // the clients resume early in the stall
	fb.dropClients()
	time.Sleep(5500 * time.Millisecond) // the stall lasts 6 s in all, three lease TTLs
	fb.behind(pb, "after a stall of 6 s")
	for _, p := range fb.proxies {
		p.remove("timeout", "downstream")
	}
	fb.waitBalanced(15*time.Second, "a", "b")
	time.Sleep(time.Second) // load after the fault
	fb.verify(pb.finish())
}

// TestFaultCutPastLease cuts gateway a off Redis (its proxy closes every
// connection and refuses new ones) for longer than the lease TTL: b takes
// a's partitions and goes on from where a's fenced writes stopped, while
// a's clients wait or move; then a comes back, rejoins and takes its
// share again, and its own clients catch up from history.
func TestFaultCutPastLease(t *testing.T) {
	fb := newFaultBus(t, redistest.Start(t), true)
	fb.startClients()
	before := fb.owners()
	pb := fb.publish()
	time.Sleep(time.Second) // load before the fault
	cut := time.Now()
	fb.proxies["a"].enable(false)
	fb.waitTakenOver(before, "a")
	t.Logf("b took a's partitions %v after the cut (lease TTL %v)", time.Since(cut).Round(10*time.Millisecond), fleetTTL)
	fb.dropClients()
	time.Sleep(time.Until(cut.Add(2 * fleetTTL))) // the cut lasts twice the lease TTL
	fb.behind(pb, "after a cut of twice the lease TTL")
	fb.proxies["a"].enable(true)
	fb.waitBalanced(15*time.Second, "a", "b")
	time.Sleep(time.Second) // load after the fault
	fb.verify(pb.finish())
}

// TestFaultBandwidth trickles everything between the gateways and Redis at
// 16 KB/s each way, below what the load needs: owners fall behind their
// ingress, pub/sub falls behind, resumes' history reads take longer than
// the gateways' Redis timeouts. Once the trickle ends they catch up.
func TestFaultBandwidth(t *testing.T) {
	underToxic(t, "bandwidth", map[string]int{"rate": 16}, "after 4 s of a 16 KB/s trickle")
}
