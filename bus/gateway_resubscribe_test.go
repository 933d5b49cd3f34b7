package bus_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// TestReplacedConnectionCatchesUpOnlyConfirmedChannels: Redis Cluster moves
// the slot of topic a's partition, so the gateway replaces a's pub/sub
// connection; a subscribe to b (same partition) comes while the old
// connection is being closed, and the SSUBSCRIBE of a's channel on the new
// connection reaches Redis late. a must not be caught up from history and
// go live before its own channel is confirmed: an event published in
// between would be neither in the catch-up nor delivered live.
//
// It catches the gateway before issue 12 (9abe4de): its liveConn.renew,
// which replaced the connection then, published the new connection before
// sending it the bulk SSUBSCRIBE, b's own SSUBSCRIBE went first, and b's
// confirmation started a catch-up of every topic, a included; event 3
// below was lost (the client got 2, then 4).
//
// Nothing here uses the gateway's internals: the faults are the cluster's
// own slot move and a Dialer (user configuration) whose connections hold
// what the test says.
func TestReplacedConnectionCatchesUpOnlyConfirmedChannels(t *testing.T) {
	const partitions = 4
	keys := streams.Keys{Prefix: redistest.Prefix(t)}
	a := "a"
	p := streams.Partition(a, partitions)
	b := samePartition(a, partitions)
	cl := redistest.StartCluster(t, 2, 0)
	direct := cl.Client(t)
	ctx := context.Background()

	w := &faultWire{channel: []byte(keys.Live(p, a) + "\r\n"), lateBy: time.Second,
		closing: make(chan struct{}), closeGo: make(chan struct{}), released: make(chan struct{}), holding: make(chan struct{})}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs(cl), Dialer: w.dial})
	t.Cleanup(func() { _ = rdb.Close() })
	g, url := serveGateway(t, rdb, keys, partitions)
	t.Cleanup(w.unblock) // before the gateway's Close, which closes its connections

	add := func(seq uint64) int64 {
		t.Helper()
		id := strconv.FormatUint(seq, 10) + "-1"
		if err := direct.XAdd(ctx, &redis.XAddArgs{Stream: keys.Topic(p, a), ID: id, Values: []any{"data", `"x"`, "seq", seq}}).Err(); err != nil {
			t.Fatal(err)
		}
		n, err := direct.SPublish(ctx, keys.Live(p, a), streams.AppendEvent(nil, a, id, seq, []byte(`"x"`))).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ca := wstest.Dial(t, url)
	ca.Subscribe(a, "", "")
	ca.Expect("subscribed", 10*time.Second)
	if n := add(1); n != 1 {
		t.Fatalf("event 1 reached %d subscribers of the live channel, want the gateway", n)
	}
	expectSeq(t, ca, 1)

	w.armed.Store(true)
	dst := cl.MoveSlot(t, keys.Topic(p, a))
	select {
	case <-w.closing: // Redis dropped a's channel: the gateway closes that connection
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not close its pub/sub connection after the slot moved")
	}
	testutil.Eventually(t, 10*time.Second, func() error { // or the new connection is refused with MOVED
		rdb.ReloadState(ctx)
		node, err := rdb.MasterForKey(ctx, keys.Topic(p, a))
		if err != nil || node.Options().Addr != dst.Options().Addr {
			return fmt.Errorf("the gateway's client does not map the slot to %s yet (%v)", dst.Options().Addr, err)
		}
		return nil
	})
	if n := add(2); n != 0 { // only history has it
		t.Fatalf("event 2 reached %d subscribers while the gateway's connection was being replaced", n)
	}
	cb := wstest.Dial(t, url)
	cb.Subscribe(b, "", "")
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := g.Stats().Topics; n != 2 {
			return fmt.Errorf("%d topics, want 2", n)
		}
		return nil
	})
	// The old connection closes; the gateway asks for a's channel (and b's)
	// on a new one, where what holds a's channel waits w.lateBy.
	w.letClose()

	// Event 2 is only in history: a catch-up delivers it. The gateway of
	// issue 12 starts it once a's channel is confirmed, after the timer let
	// the SSUBSCRIBE go; the old one started it on b's confirmation, a's
	// SSUBSCRIBE still held.
	expectSeq(t, ca, 2)
	select {
	case <-w.holding:
	default:
		t.Fatal("a's channel was never asked for on a new connection")
	}
	if w.claim.CompareAndSwap(false, true) {
		// Caught up while a's SSUBSCRIBE is still held: the test, not the
		// timer, lets it go, after event 3.
		n := add(3)
		t.Logf("a was caught up from history before Redis had its SSUBSCRIBE; event 3 reached %d subscribers", n)
		w.release()
	} else {
		add(3)
	}
	// Event 4 goes once a's channel is subscribed: it comes live.
	testutil.Eventually(t, 10*time.Second, func() error {
		n, err := dst.PubSubShardNumSub(ctx, keys.Live(p, a)).Result()
		if err != nil || n[keys.Live(p, a)] != 1 {
			return fmt.Errorf("a's channel not subscribed on %s yet (%v)", dst.Options().Addr, err)
		}
		return nil
	})
	add(4)
	expectSeq(t, ca, 3)
	expectSeq(t, ca, 4)
}

// samePartition returns a topic other than topic in its partition.
func samePartition(topic string, partitions int) string {
	p := streams.Partition(topic, partitions)
	for i := 0; ; i++ {
		if other := "b" + strconv.Itoa(i); streams.Partition(other, partitions) == p {
			return other
		}
	}
}

// expectSeq reads the next message of c and fails unless it is the event
// with seq.
func expectSeq(tb testing.TB, c *wstest.Client, seq uint64) {
	tb.Helper()
	m := c.Next(10 * time.Second)
	if m.Type != "event" || m.Seq != seq {
		tb.Fatalf("got %+v, want the event with seq %d (an event went missing)", m, seq)
	}
}

// faultWire makes the connections of a Redis client, through its Dialer,
// hold what the test says once armed: the first Close of a pub/sub
// connection dialed before (until letClose), and, on a pub/sub connection
// dialed after, the first write that holds channel and every write after
// it, in order (until release). lateBy is the delay of that write, the
// fault: the timer releases it then unless the test claimed the release
// first, which it does only when the gateway has gone on without it. The
// test's order comes from what it sees, never from the timer: on the
// gateway of issue 12 nothing it waits for can happen before the release.
type faultWire struct {
	channel []byte
	lateBy  time.Duration
	armed   atomic.Bool
	claim   atomic.Bool // whoever sets it releases: the test or the timer

	closing  chan struct{} // closed when the held Close began
	closeGo  chan struct{} // closed by the test
	holding  chan struct{} // closed when the held write came
	released chan struct{} // closed by release

	closeOnce, letCloseOnce, holdOnce, releaseOnce sync.Once
}

func (w *faultWire) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: c, w: w, late: w.armed.Load()}, nil
}

func (w *faultWire) release()  { w.releaseOnce.Do(func() { close(w.released) }) }
func (w *faultWire) letClose() { w.letCloseOnce.Do(func() { close(w.closeGo) }) }

// unblock lets everything held go.
func (w *faultWire) unblock() {
	w.letClose()
	w.release()
}

type faultConn struct {
	net.Conn
	w    *faultWire
	late bool // dialed after the wire was armed

	mu      sync.Mutex
	pubsub  bool     // has sent an SSUBSCRIBE
	holding bool     // writes wait in held
	held    [][]byte // in order
}

func (c *faultConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pubsub = c.pubsub || bytes.Contains(b, []byte("ssubscribe"))
	if c.late && c.pubsub && !c.holding && bytes.Contains(b, c.w.channel) {
		c.w.holdOnce.Do(func() {
			c.holding = true
			close(c.w.holding)
			time.AfterFunc(c.w.lateBy, func() {
				if c.w.claim.CompareAndSwap(false, true) {
					c.w.release()
				}
			})
			go c.deliverLate()
		})
	}
	if c.holding {
		c.held = append(c.held, bytes.Clone(b))
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// deliverLate writes what was held once released, before any later write.
func (c *faultConn) deliverLate() {
	<-c.w.released
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.held {
		if _, err := c.Conn.Write(b); err != nil {
			break
		}
	}
	c.held, c.holding = nil, false
}

func (c *faultConn) Close() error {
	c.mu.Lock()
	hold := !c.late && c.pubsub && c.w.armed.Load()
	c.mu.Unlock()
	if hold {
		c.w.closeOnce.Do(func() {
			close(c.w.closing)
			<-c.w.closeGo
		})
	}
	return c.Conn.Close()
}

func clusterAddrs(cl *redistest.Cluster) []string {
	var addrs []string
	for _, m := range cl.Masters {
		addrs = append(addrs, m.Addr)
	}
	return addrs
}

// serveGateway serves a Gateway on rdb until the test ends; url is its
// WebSocket endpoint.
func serveGateway(tb testing.TB, rdb redis.UniversalClient, keys streams.Keys, partitions int) (g *bus.Gateway, url string) {
	tb.Helper()
	// The epochs a migrated bus has: a partition without one is
	// unavailable to subscribers.
	for p := range partitions {
		if err := rdb.HSetNX(context.Background(), keys.PartitionMeta(p), "epoch", "e1").Err(); err != nil {
			tb.Fatal(err)
		}
	}
	g, err := bus.NewGateway(bus.GatewayConfig{Redis: rdb, Keys: keys, Partitions: partitions,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = g.Close() })
	srv, err := ws.New(ws.Config{Handler: g, Path: "/v1/ws"})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx, ws.CloseGoingAway, "test over")
		<-served
	})
	return g, "ws://" + ln.Addr().String() + "/v1/ws"
}
