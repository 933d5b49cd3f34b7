package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// liveGateway starts a Gateway on rdb, closed when the test ends.
func liveGateway(tb testing.TB, rdb redis.UniversalClient, prefix string) *Gateway {
	tb.Helper()
	g, err := NewGateway(GatewayConfig{
		Redis: rdb, Keys: streams.Keys{Prefix: prefix}, Partitions: 4,
		Logger: slog.New(slog.NewTextHandler(testWriter{tb}, nil)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = g.Close() })
	return g
}

// readyTopic refers to topic name and waits until its live channel is
// confirmed.
func readyTopic(tb testing.TB, g *Gateway, name string) *topic {
	tb.Helper()
	tp := g.refTopic(name)
	if !g.waitReady(tp) {
		tb.Fatalf("live channel of %s not confirmed", name)
	}
	return tp
}

// proxiedGateway starts a Redis and a Gateway that reaches it through a
// proxy; direct is a client of the Redis itself.
func proxiedGateway(tb testing.TB) (g *Gateway, px *proxy, direct *redis.Client) {
	tb.Helper()
	srv := redistest.Start(tb)
	px = startProxy(tb, srv.Addr)
	g = liveGateway(tb, redis.NewClient(&redis.Options{Addr: px.Addr()}), redistest.Prefix(tb))
	return g, px, srv.Client(tb)
}

// publishLive publishes an event of topic with id and seq on its live
// channel, as the owner does, and waits until tp has it.
func publishLive(tb testing.TB, rdb redis.UniversalClient, g *Gateway, tp *topic, id string, seq uint64) {
	tb.Helper()
	payload := streams.AppendEvent(nil, tp.name(), id, seq, []byte(`"x"`))
	if err := rdb.SPublish(context.Background(), g.channel(tp.name()), payload).Err(); err != nil {
		tb.Fatal(err)
	}
	want := streams.MustParseID(id)
	testutil.Eventually(tb, 10*time.Second, func() error {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		if tp.seen != want {
			return fmt.Errorf("topic %s has seen %v, want %v", tp.name(), tp.seen, want)
		}
		return nil
	})
}

// pubsubClients returns the IDs of Redis's pub/sub connections.
func pubsubClients(tb testing.TB, rdb *redis.Client) []string {
	tb.Helper()
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		tb.Fatal(err)
	}
	var ids []string
	for line := range strings.Lines(list) {
		if !strings.Contains(line, " flags=P ") {
			continue
		}
		for field := range strings.FieldsSeq(line) {
			if id, ok := strings.CutPrefix(field, "id="); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// shardSubscribers returns how many connections Redis has on channel.
func shardSubscribers(tb testing.TB, rdb *redis.Client, channel string) int64 {
	tb.Helper()
	n, err := rdb.PubSubShardNumSub(context.Background(), channel).Result()
	if err != nil {
		tb.Fatal(err)
	}
	return n[channel]
}

// TestSweptTopicWantedAgainBeforeRedisConfirms: a topic swept (its
// SUNSUBSCRIBE sent) and subscribed again before Redis confirms the
// unsubscribe is subscribed again once it has, on the same connection:
// the confirmation is not taken for a slot move, the connection is not
// replaced and no topic is caught up from history.
func TestSweptTopicWantedAgainBeforeRedisConfirms(t *testing.T) {
	g, px, direct := proxiedGateway(t)
	first := readyTopic(t, g, "a")
	publishLive(t, direct, g, first, "1-1", 1)
	before := pubsubClients(t, direct)
	if len(before) != 1 {
		t.Fatalf("pub/sub connections %v, want one", before)
	}

	g.unrefTopic(first)
	px.Hold("") // Redis's confirmations wait
	g.sweepIdle(time.Now().Add(2 * topicLinger).UnixNano())
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := shardSubscribers(t, direct, g.channel("a")); n != 0 {
			return fmt.Errorf("channel still has %d subscribers", n)
		}
		return nil
	})
	again := g.refTopic("a")
	if again == first {
		t.Fatal("the swept topic was handed out again")
	}
	px.Release()

	if !g.waitReady(again) {
		t.Fatal("live channel of the topic wanted again not confirmed")
	}
	publishLive(t, direct, g, again, "2-1", 2)
	if got := pubsubClients(t, direct); len(got) != 1 || got[0] != before[0] {
		t.Errorf("pub/sub connections %v, want %v kept", got, before)
	}
	if n := g.Stats().CatchUps; n != 0 {
		t.Errorf("%d catch-ups from history; the unsubscribe was taken for a lost channel", n)
	}
}

// TestRefTopicDoesNotWaitOnRedis: asking for a topic's live channel dials
// Redis; while the dial hangs, refTopic has returned and the Gateway's
// lock is free (every live event's topic lookup takes it).
func TestRefTopicDoesNotWaitOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	dialing := make(chan struct{}, 1)
	release := make(chan struct{})
	var armed atomic.Bool // dials block from here on
	rdb := redis.NewClient(&redis.Options{
		Addr: srv.Addr,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if !armed.Load() {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			select {
			case dialing <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	})
	g := liveGateway(t, rdb, redistest.Prefix(t))
	// The acker loads its script at start, on a connection of its own:
	// only the live channel's dial is held.
	direct := srv.Client(t)
	testutil.Eventually(t, 10*time.Second, func() error {
		if ok, err := direct.ScriptExists(context.Background(), ackScript.Hash()).Result(); err != nil || !ok[0] {
			return fmt.Errorf("ack script not loaded yet (%v)", err)
		}
		return nil
	})
	armed.Store(true)

	acquired := make(chan *topic, 1)
	go func() { acquired <- g.refTopic("a") }()
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the live channel was never asked for")
	}
	stats := make(chan GatewayStats, 1)
	go func() { stats <- g.Stats() }()
	var tp *topic
	for tp == nil || stats != nil {
		select {
		case tp = <-acquired:
		case s := <-stats:
			if s.Topics != 1 {
				t.Errorf("Stats().Topics = %d, want 1", s.Topics)
			}
			stats = nil
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("refTopic or Stats waited on the Redis dial: Gateway.mu is held across it")
		}
	}
	close(release)
	if !g.waitReady(tp) {
		t.Fatal("live channel not confirmed after the dial went through")
	}
}

// TestCatchUpWaitsForItsChannel: after the live connection is lost, a
// topic is caught up from history only once Redis has confirmed its
// channel on the new connection, never before (events published between
// the history read and the subscription would be lost).
func TestCatchUpWaitsForItsChannel(t *testing.T) {
	g, px, direct := proxiedGateway(t)
	tp := readyTopic(t, g, "a")
	publishLive(t, direct, g, tp, "1-1", 1)
	before := pubsubClients(t, direct)

	px.Hold("ssubscribe") // the new connection's handshake passes, its confirmation waits
	px.Cut()
	// The new connection is subscribed in Redis; its confirmation waits.
	testutil.Eventually(t, 10*time.Second, func() error {
		ids := pubsubClients(t, direct)
		if len(ids) != 1 || ids[0] == before[0] || shardSubscribers(t, direct, g.channel("a")) != 1 {
			return fmt.Errorf("pub/sub connections %v (before %v)", ids, before)
		}
		return nil
	})
	tp.mu.Lock()
	catching := tp.catching
	tp.mu.Unlock()
	if !catching {
		t.Fatal("the topic is not catching after its connection was lost")
	}
	if n := g.Stats().CatchUps; n != 0 {
		t.Fatalf("%d catch-ups before Redis confirmed the channel", n)
	}
	px.Release()
	testutil.Eventually(t, 10*time.Second, func() error {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		if tp.catching {
			return fmt.Errorf("still catching up (%d catch-ups)", g.Stats().CatchUps)
		}
		return nil
	})
	if n := g.Stats().CatchUps; n != 1 {
		t.Errorf("%d catch-ups, want 1", n)
	}
	publishLive(t, direct, g, tp, "2-1", 2)
}

// TestCloseDoesNotWaitOnRedis: Close, which waits for every goroutine the
// Gateway started, returns while Redis answers nothing.
func TestCloseDoesNotWaitOnRedis(t *testing.T) {
	g, px, _ := proxiedGateway(t) // its Close at the end of the test returns at once, a second time
	readyTopic(t, g, "a")
	px.Hold("") // Redis answers nothing from here on
	g.refTopic("b")
	closed := make(chan struct{})
	go func() {
		_ = g.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited on Redis")
	}
}

// testWriter writes a Gateway's log to the test's.
type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// gatedRedis returns a client of srv whose new connections fail while the
// gate is closed (the test's Redis "unreachable" for new dials only).
func gatedRedis(srv *redistest.Server) (*redis.Client, *atomic.Bool) {
	var closed atomic.Bool
	rdb := redis.NewClient(&redis.Options{
		Addr: srv.Addr,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if closed.Load() {
				return nil, errors.New("gate closed")
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	})
	return rdb, &closed
}

// waitTopic waits until cond holds of tp, under its lock.
func waitTopic(tb testing.TB, tp *topic, what string, cond func(*topic) bool) {
	tb.Helper()
	testutil.Eventually(tb, 10*time.Second, func() error {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		if !cond(tp) {
			return fmt.Errorf("topic %s: not %s (seen %v seq %d catching %v live %v)", tp.name(), what, tp.seen, tp.seq, tp.catching, tp.live)
		}
		return nil
	})
}

// TestSweptTopicWantedAgainBeforeReconcile: a topic swept and wanted
// again before the connection's goroutine took the sweep is ready at once
// (its channel was never dropped), not left waiting for a confirmation
// that will not come.
func TestSweptTopicWantedAgainBeforeReconcile(t *testing.T) {
	srv := redistest.Start(t)
	g := liveGateway(t, srv.Client(t), redistest.Prefix(t))
	first := readyTopic(t, g, "a")
	g.unrefTopic(first)
	g.mu.RLock()
	lc := g.parts[first.p]
	g.mu.RUnlock()

	lc.mu.Lock() // the goroutine cannot take the pokes until both are in
	swept := make(chan struct{})
	go func() { // its poke waits for lc.mu
		g.sweepIdle(time.Now().Add(2 * topicLinger).UnixNano())
		close(swept)
	}()
	testutil.Eventually(t, 5*time.Second, func() error {
		if g.topicNamed("a") != nil {
			return errors.New("not swept yet")
		}
		return nil
	})
	got := make(chan *topic, 1)
	go func() { got <- g.refTopic("a") }() // pokes, waiting for lc.mu
	testutil.Eventually(t, 5*time.Second, func() error {
		if g.topicNamed("a") == nil {
			return errors.New("not wanted again yet")
		}
		return nil
	})
	lc.mu.Unlock()
	<-swept
	if again := <-got; !g.waitReady(again) {
		t.Fatal("the topic wanted again right after its sweep was never ready")
	}
}

// TestCatchUpEndsOnlyOnAConfirmedChannel: a catch-up asked for while the
// live connection is down (a queued one, or one a subscriber's new epoch
// asks for) does not end the topic's hold; the confirmation on the new
// connection does, after history: an event published while the channel
// had no subscriber is delivered.
func TestCatchUpEndsOnlyOnAConfirmedChannel(t *testing.T) {
	srv := redistest.Start(t)
	direct := srv.Client(t)
	rdb, gate := gatedRedis(srv)
	g := liveGateway(t, rdb, redistest.Prefix(t))
	tp := readyTopic(t, g, "a")
	ctx := context.Background()
	add := func(id string, seq uint64) int64 {
		hist := g.cfg.Keys.Topic(int(tp.p), "a")
		if err := direct.XAdd(ctx, &redis.XAddArgs{Stream: hist, ID: id, Values: []any{"data", `"x"`, "seq", seq}}).Err(); err != nil {
			t.Fatal(err)
		}
		n, err := direct.SPublish(ctx, g.channel("a"), streams.AppendEvent(nil, "a", id, seq, []byte(`"x"`))).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	add("1-1", 1)
	waitTopic(t, tp, "at 1-1", func(tp *topic) bool { return tp.seq == 1 })
	if _, err := g.hist.Head(ctx, "a"); err != nil { // a pooled connection for history reads
		t.Fatal(err)
	}
	gate.Store(true)
	if err := direct.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitTopic(t, tp, "catching, its channel lost", func(tp *topic) bool { return tp.catching && !tp.live })
	g.queueCatchUp(tp)
	if n := add("2-1", 2); n != 0 {
		t.Fatalf("published to %d subscribers while the gateway's connection was down", n)
	}
	gate.Store(false)
	waitTopic(t, tp, "caught up to 2-1", func(tp *topic) bool { return !tp.catching && tp.seq == 2 })
	add("3-1", 3)
	waitTopic(t, tp, "at 3-1", func(tp *topic) bool { return tp.seq == 3 })
}

// TestCatchUpAcrossATrim: history trimmed past the last event a topic
// delivered while its connection was down: the catch-up does not deliver
// what is left as if it followed; it closes the subscribers that had not
// got that far (4001: their resume reports missed) and counts a reset.
func TestCatchUpAcrossATrim(t *testing.T) {
	srv := redistest.Start(t)
	direct := srv.Client(t)
	rdb, gate := gatedRedis(srv)
	g := liveGateway(t, rdb, redistest.Prefix(t))
	tp := readyTopic(t, g, "a")
	ctx := context.Background()
	xadd := func(id string, seq uint64) {
		hist := g.cfg.Keys.Topic(int(tp.p), "a")
		if err := direct.XAdd(ctx, &redis.XAddArgs{Stream: hist, MaxLen: 3, ID: id, Values: []any{"data", `"x"`, "seq", seq}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	xadd("1-1", 1)
	publishLive(t, direct, g, tp, "1-1", 1)
	if _, err := g.hist.Head(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	gate.Store(true)
	if err := direct.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitTopic(t, tp, "catching", func(tp *topic) bool { return tp.catching })
	for i := uint64(2); i <= 10; i++ {
		xadd(fmt.Sprintf("%d-1", i), i) // trimmed to 3: 8, 9 and 10 remain
	}
	gate.Store(false)
	waitTopic(t, tp, "caught up to 10", func(tp *topic) bool { return !tp.catching && tp.seq == 10 })
	if n := g.Stats().Resets; n != 1 {
		t.Fatalf("%d resets, want 1: seq 1 was followed by 8 as if nothing had been trimmed", n)
	}
}
