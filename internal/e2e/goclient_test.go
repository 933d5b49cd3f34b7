package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// handler collects what a Go client hands the application.
type handler struct {
	mu     sync.Mutex
	events []wsbus.Event
	subs   []wsbus.Subscribed
	gaps   []wsbus.Gap
	states []wsbus.State
}

func (h *handler) options(since string) wsbus.SubscribeOptions {
	return wsbus.SubscribeOptions{
		Since:        since,
		OnEvent:      func(e wsbus.Event) { h.mu.Lock(); h.events = append(h.events, e); h.mu.Unlock() },
		OnSubscribed: func(s wsbus.Subscribed) { h.mu.Lock(); h.subs = append(h.subs, s); h.mu.Unlock() },
		OnGap:        func(g wsbus.Gap) { h.mu.Lock(); h.gaps = append(h.gaps, g); h.mu.Unlock() },
	}
}

func (h *handler) onState(s wsbus.State, _ error) {
	h.mu.Lock()
	h.states = append(h.states, s)
	h.mu.Unlock()
}

// waitEvents waits until the handler holds n events and checks they are
// the IDs want, once each, in order, with seq contiguous from firstSeq.
func (h *handler) waitEvents(tb testing.TB, want []string, firstSeq uint64) {
	tb.Helper()
	testutil.Eventually(tb, 20*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.events) < len(want) {
			return fmt.Errorf("handed %d of %d events", len(h.events), len(want))
		}
		return nil
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	var got []string
	for i, e := range h.events {
		got = append(got, e.ID)
		if e.Seq != firstSeq+uint64(i) {
			tb.Fatalf("event %d (%s) has seq %d, want %d", i, e.ID, e.Seq, firstSeq+uint64(i))
		}
	}
	if !slices.Equal(got, want) {
		tb.Fatalf("handed %v, want %v: each once, in order", got, want)
	}
	if len(h.gaps) > 0 {
		tb.Fatalf("gaps reported: %+v", h.gaps)
	}
}

// runClient runs c until the test ends.
func runClient(tb testing.TB, c *wsbus.Client) { tb.Cleanup(startClient(tb, c)) }

// startClient runs c until stop is called (once), which waits for Run.
func startClient(tb testing.TB, c *wsbus.Client) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("Run: %v", err)
			}
		})
	}
}

// waitSubscribed waits for the handler's n-th subscribed answer.
func (h *handler) waitSubscribed(tb testing.TB, n int) wsbus.Subscribed {
	tb.Helper()
	var s wsbus.Subscribed
	testutil.Eventually(tb, 20*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.subs) < n {
			return fmt.Errorf("%d subscribed answers, want %d", len(h.subs), n)
		}
		s = h.subs[n-1]
		return nil
	})
	return s
}

// TestGoClientResumesAcrossKill: the gateway is SIGKILLed and another
// starts on its address; the client resumes and hands over every event
// once, in order.
func TestGoClientResumesAcrossKill(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	listen := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	g := startGateway(t, srv.URL(), prefix, "--listen", listen, "--node-id", "a", "--lease-ttl", "1s")
	pub := newPublisher(t, srv, prefix)
	var h handler
	c := wsbus.New(g.url, wsbus.Options{OnState: h.onState, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	c.Subscribe("orders", h.options(""))
	runClient(t, c)
	h.waitSubscribed(t, 1)
	var ids []string
	for i := range 5 {
		ids = append(ids, pub.XAdd(t, "orders", strconv.Itoa(i)))
	}
	h.waitEvents(t, ids, 1)
	g.kill(t)
	for i := 5; i < 10; i++ {
		ids = append(ids, pub.XAdd(t, "orders", strconv.Itoa(i)))
	}
	startGateway(t, srv.URL(), prefix, "--listen", listen, "--node-id", "b", "--lease-ttl", "1s")
	if s := h.waitSubscribed(t, 2); !s.Recovered {
		t.Fatalf("resumed = %+v, want recovered", s)
	}
	for i := 10; i < 15; i++ {
		ids = append(ids, pub.XAdd(t, "orders", strconv.Itoa(i)))
	}
	h.waitEvents(t, ids, 1)
}

// TestGoClientFollowsADrain: the gateway the client is on drains
// (SIGTERM, close code 4002) while events are published; the client
// reconnects at once through its dialer, which finds the other gateway,
// as a load balancer would, and misses nothing.
func TestGoClientFollowsADrain(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	a := startGateway(t, srv.URL(), prefix, "--node-id", "a", "--drain-rate", "0")
	b := startGateway(t, srv.URL(), prefix, "--node-id", "b")
	pub := newPublisher(t, srv, prefix)
	var mu sync.Mutex
	drained := false
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		mu.Lock()
		addr := a.addr
		if drained {
			addr = b.addr
		}
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	var h handler
	// A backoff far beyond the test: only the drain's "at once" can pass.
	c := wsbus.New("ws://gateway/v1/ws", wsbus.Options{NetDial: dial, MinBackoff: time.Minute, MaxBackoff: time.Minute})
	c.Subscribe("moves", h.options(""))
	runClient(t, c)
	h.waitSubscribed(t, 1)
	var ids []string
	for i := range 5 {
		ids = append(ids, pub.XAdd(t, "moves", strconv.Itoa(i)))
	}
	h.waitEvents(t, ids, 1)
	mu.Lock()
	drained = true
	mu.Unlock()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 20; i++ {
		ids = append(ids, pub.XAdd(t, "moves", strconv.Itoa(i)))
		time.Sleep(5 * time.Millisecond) // paced, so that the events straddle the drain
	}
	if s := h.waitSubscribed(t, 2); !s.Recovered {
		t.Fatalf("resumed = %+v, want recovered", s)
	}
	h.waitEvents(t, ids, 1)
}

// TestGoClientTokenFunction: a gateway with JWT auth closes a connection
// whose token expired with 4003; the client asks its token function for a
// new one and resumes. Its refresh before exp is made to fail once, so
// the token does expire.
func TestGoClientTokenFunction(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	const secret = "a-secret-for-the-go-client-test"
	g := startGateway(t, srv.URL(), prefix, "--jwt-secret", secret)
	pub := newPublisher(t, srv, prefix)
	var mu sync.Mutex
	calls := 0
	tokens := func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 2 {
			return "", errors.New("token service down") // the refresh before exp
		}
		claims := jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(2 * time.Second).Unix(), "topics": []string{"secure:*"}}
		return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	}
	var h handler
	c := wsbus.New(g.url, wsbus.Options{TokenFunc: tokens, MinBackoff: 50 * time.Millisecond})
	c.Subscribe("secure:1", h.options(""))
	runClient(t, c)
	h.waitSubscribed(t, 1)
	var ids []string
	for i := range 3 {
		ids = append(ids, pub.XAdd(t, "secure:1", strconv.Itoa(i)))
	}
	h.waitEvents(t, ids, 1)
	// The token expires (4003); the client comes back with a new one.
	if s := h.waitSubscribed(t, 2); !s.Recovered {
		t.Fatalf("resumed = %+v, want recovered", s)
	}
	for i := 3; i < 6; i++ {
		ids = append(ids, pub.XAdd(t, "secure:1", strconv.Itoa(i)))
	}
	h.waitEvents(t, ids, 1)
	mu.Lock()
	defer mu.Unlock()
	if calls < 3 {
		t.Fatalf("token function called %d times, want a first token, a failed refresh and one after 4003", calls)
	}
}

// mapStore is a Store in memory, shared by two clients as a file would
// be by two runs of a program.
type mapStore struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *mapStore) Get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok
}
func (s *mapStore) Set(k, v string) { s.mu.Lock(); defer s.mu.Unlock(); s.m[k] = v }

// TestGoClientStoreResumesARestart: a second client (the application
// restarted) with the first one's store resumes where it stopped.
func TestGoClientStoreResumesARestart(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)
	store := &mapStore{m: map[string]string{}}

	var first handler
	c := wsbus.New(g.url, wsbus.Options{Store: store})
	c.Subscribe("saved", first.options(""))
	stop := startClient(t, c)
	first.waitSubscribed(t, 1)
	ids := []string{pub.XAdd(t, "saved", "0"), pub.XAdd(t, "saved", "1")}
	first.waitEvents(t, ids, 1)
	stop()

	missed := []string{pub.XAdd(t, "saved", "2"), pub.XAdd(t, "saved", "3")}
	var second handler
	c = wsbus.New(g.url, wsbus.Options{Store: store})
	c.Subscribe("saved", second.options("")) // the store's cursor wins over Since
	runClient(t, c)
	if s := second.waitSubscribed(t, 1); !s.Recovered {
		t.Fatalf("subscribed = %+v, want recovered", s)
	}
	second.waitEvents(t, missed, 3)
}

// TestGoClientGapWithMissed: history was trimmed while the client was
// away; it is told how many events are gone, then handed what is left.
func TestGoClientGapWithMissed(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)
	store := &mapStore{m: map[string]string{}}
	var first handler
	c := wsbus.New(g.url, wsbus.Options{Store: store})
	c.Subscribe("trim", first.options(""))
	stop := startClient(t, c)
	first.waitSubscribed(t, 1)
	ids := []string{pub.XAdd(t, "trim", "0")}
	first.waitEvents(t, ids, 1)
	stop()

	for i := 1; i <= 30; i++ {
		ids = append(ids, pub.XAdd(t, "trim", strconv.Itoa(i)))
	}
	key := pub.Keys.Topic(streams.Partition("trim", pub.N), "trim")
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := pub.Redis.XLen(context.Background(), key).Val(); n != 31 {
			return fmt.Errorf("history holds %d of 31", n)
		}
		return nil
	})
	if err := pub.Redis.XTrimMaxLen(context.Background(), key, 10).Err(); err != nil {
		t.Fatal(err)
	}
	var second handler
	c = wsbus.New(g.url, wsbus.Options{Store: store})
	c.Subscribe("trim", second.options(""))
	runClient(t, c)
	s := second.waitSubscribed(t, 1)
	if s.Recovered || s.Missed == nil || *s.Missed != 20 {
		t.Fatalf("subscribed = %+v, want not recovered with missed 20", s)
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		second.mu.Lock()
		defer second.mu.Unlock()
		if len(second.gaps) != 1 || second.gaps[0].Missed == nil || *second.gaps[0].Missed != 20 {
			return fmt.Errorf("gaps = %+v, want one with missed 20", second.gaps)
		}
		return nil
	})
	second.mu.Lock()
	second.gaps = nil // reported; what follows must be whole
	second.mu.Unlock()
	second.waitEvents(t, ids[21:], 22)
}

// TestGoClientAcksAcrossDevices: one subject's two devices: what the first
// acknowledges, the second resumes after with since "acked", told the
// cursor and the unread count.
func TestGoClientAcksAcrossDevices(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)
	var phone handler
	c := wsbus.New(g.url, wsbus.Options{User: "ann"})
	c.Subscribe("inbox:ann", phone.options(""))
	runClient(t, c)
	phone.waitSubscribed(t, 1)
	var ids []string
	for i := range 5 {
		ids = append(ids, pub.XAdd(t, "inbox:ann", strconv.Itoa(i)))
	}
	phone.waitEvents(t, ids, 1)
	if err := c.Ack("inbox:ann", ids[2]); err != nil {
		t.Fatal(err)
	}
	var laptop handler
	var s wsbus.Subscribed
	testutil.Eventually(t, testutil.Wait, func() error {
		// Acks reach Redis in batches: a laptop that opens too early sees
		// the cursor before it.
		laptop = handler{}
		l := wsbus.New(g.url, wsbus.Options{User: "ann"})
		l.Subscribe("inbox:ann", laptop.options("acked"))
		defer startClient(t, l)()
		s = laptop.waitSubscribed(t, 1)
		if s.Acked != ids[2] {
			return fmt.Errorf("laptop subscribed with acked %q, want %s", s.Acked, ids[2])
		}
		laptop.waitEvents(t, ids[3:], 4)
		return nil
	})
	if !s.Recovered || s.Unread == nil || *s.Unread != 2 {
		t.Fatalf("laptop subscribed = %+v, want recovered with unread 2", s)
	}
}

// TestGoClientResumesA4001: a gateway in --slow-consumer close mode cuts
// the client while its application is stuck on an event; the client
// resumes at once and the application still gets every event once, in
// order.
func TestGoClientResumesA4001(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, "--slow-consumer", "close", "--max-queue", "65536", "--history-len", "10000")
	pub := newPublisher(t, srv, prefix)
	var h handler
	stuck := make(chan struct{})
	opts := h.options("")
	handle := opts.OnEvent
	var once sync.Once
	opts.OnEvent = func(e wsbus.Event) {
		once.Do(func() { <-stuck }) // the application is busy with its first event
		handle(e)
	}
	// A backoff far beyond the test: only the resume "at once" after a 4001 can pass.
	c := wsbus.New(g.url, wsbus.Options{MinBackoff: time.Minute, MaxBackoff: time.Minute})
	c.Subscribe("flood", opts)
	runClient(t, c)
	h.waitSubscribed(t, 1)
	ids := pub.xaddMany(t, "flood", strings.Repeat("z", 4<<10), 3000) // 12 MiB: past the socket buffers and the queue
	testutil.Eventually(t, 20*time.Second, func() error {
		if n := metric(t, g, "wsbus_ws_slow_consumers_total"); n < 1 {
			return fmt.Errorf("not cut yet (slow consumers %d)", n)
		}
		return nil
	})
	close(stuck)
	if s := h.waitSubscribed(t, 2); !s.Recovered {
		t.Fatalf("resumed = %+v, want recovered", s)
	}
	h.waitEvents(t, ids, 1)
}

// TestGoClientSubscribesAgain: subscribing to a topic again while
// connected (replacing the subscription, or after an unsubscribe) starts
// the new one where it asks, with none of the old one's events.
func TestGoClientSubscribesAgain(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)
	var first handler
	c := wsbus.New(g.url, wsbus.Options{OnError: func(m wsbus.Message) { t.Errorf("error from the gateway: %+v", m) }})
	sub := c.Subscribe("again", first.options(""))
	runClient(t, c)
	first.waitSubscribed(t, 1)
	ids := []string{pub.XAdd(t, "again", "0"), pub.XAdd(t, "again", "1")}
	first.waitEvents(t, ids, 1)

	var second handler
	replaced := c.Subscribe("again", second.options("0")) // replaces the first: everything retained
	second.waitSubscribed(t, 1)
	ids = append(ids, pub.XAdd(t, "again", "2"))
	second.waitEvents(t, ids, 1)
	first.waitEvents(t, ids[:2], 1) // the replaced one gets nothing more

	sub.Unsubscribe() // not the current subscription: nothing happens
	replaced.Unsubscribe()
	var third handler
	c.Subscribe("again", third.options(ids[0]))
	third.waitSubscribed(t, 1)
	third.waitEvents(t, ids[1:], 2)
}
