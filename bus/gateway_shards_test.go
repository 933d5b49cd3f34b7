package bus

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// shardedGateway starts a Gateway on a Redis of its own with at least
// two fan-out shards, whatever the machine's cores.
func shardedGateway(tb testing.TB) (*Gateway, *redistest.Server) {
	tb.Helper()
	if n := runtime.GOMAXPROCS(0); n < 2 {
		runtime.GOMAXPROCS(2)
		tb.Cleanup(func() { runtime.GOMAXPROCS(n) })
	}
	srv := redistest.Start(tb)
	return liveGateway(tb, srv.Client(tb), redistest.Prefix(tb)), srv
}

// liveSub adds a live subscription of conn to tp, as goLive leaves one.
func liveSub(tp *topic, conn clientConn) {
	s := &subscription{conn: conn, topic: tp, live: true}
	tp.mu.Lock()
	tp.addLocked(s)
	tp.mu.Unlock()
}

// stuckConn is a client's connection whose Offer waits until it is let
// go: a fan-out stuck on one subscriber.
type stuckConn struct {
	fakeConn
	entered chan struct{} // closed by the first Offer
	letGo   chan struct{}
}

func (c *stuckConn) Offer(f ws.Frame) error {
	select {
	case <-c.entered:
	default:
		close(c.entered)
	}
	<-c.letGo
	return c.Send(f)
}

// TestFanOutOfOneTopicDoesNotHoldUpAnother: while the fan-out of one
// topic's event is stuck on a subscriber, another topic's events (on
// another shard) still reach its subscribers. When the reader fanned out
// every event itself, the second topic waited for the first.
func TestFanOutOfOneTopicDoesNotHoldUpAnother(t *testing.T) {
	g, srv := shardedGateway(t)
	direct := srv.Client(t)
	a := "a"
	b := ""
	for i := 0; b == ""; i++ {
		if name := "b" + strconv.Itoa(i); g.fan.shard(g.channel(name)) != g.fan.shard(g.channel(a)) {
			b = name
		}
	}
	ta, tb := readyTopic(t, g, a), readyTopic(t, g, b)
	stuck := &stuckConn{entered: make(chan struct{}), letGo: make(chan struct{})}
	t.Cleanup(func() { close(stuck.letGo) }) // before the Gateway's Close
	liveSub(ta, stuck)
	other := &fakeConn{}
	liveSub(tb, other)

	payload := streams.AppendEvent(nil, a, "1-1", 1, []byte(`"x"`))
	if err := direct.SPublish(context.Background(), g.channel(a), payload).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stuck.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck subscriber was never offered its event")
	}
	publishLive(t, direct, g, tb, "2-1", 1)
	publishLive(t, direct, g, tb, "3-1", 2)
	if got := len(other.messages(t)); got != 2 {
		t.Errorf("the other topic's subscriber was sent %d events, want 2", got)
	}
}

// TestFanOutKeepsEachTopicsOrder: events of many topics published
// interleaved reach each topic's subscriber once each and in order,
// fanned out over several shards at once.
func TestFanOutKeepsEachTopicsOrder(t *testing.T) {
	g, srv := shardedGateway(t)
	direct := srv.Client(t)
	const topics, events = 16, 300
	conns := make([]*fakeConn, topics)
	shards := map[int]bool{}
	for i := range conns {
		name := "t" + strconv.Itoa(i)
		conns[i] = &fakeConn{}
		liveSub(readyTopic(t, g, name), conns[i])
		shards[g.fan.shard(g.channel(name))] = true
	}
	if len(shards) < 2 {
		t.Fatalf("the topics fell on %d shard; the test wants them spread", len(shards))
	}
	ctx := context.Background()
	for seq := 1; seq <= events; seq++ {
		pipe := direct.Pipeline()
		for i := range conns {
			name := "t" + strconv.Itoa(i)
			id := strconv.Itoa(seq) + "-" + strconv.Itoa(i)
			pipe.SPublish(ctx, g.channel(name), streams.AppendEvent(nil, name, id, uint64(seq), []byte(`"x"`)))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		testutil.Eventually(t, 20*time.Second, func() error {
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.frames) < events {
				return fmt.Errorf("topic t%d: %d events of %d", i, len(c.frames), events)
			}
			return nil
		})
		msgs := c.messages(t)
		if len(msgs) != events {
			t.Fatalf("topic t%d: %d events, want %d", i, len(msgs), events)
		}
		for j, m := range msgs {
			if m.Seq != uint64(j+1) || m.Topic != "t"+strconv.Itoa(i) {
				t.Fatalf("topic t%d: event %d is %s seq %d, want seq %d", i, j, m.Topic, m.Seq, j+1)
			}
		}
	}
	if n := g.Stats().CatchUps; n != 0 {
		t.Errorf("%d catch-ups: an event came out of order", n)
	}
}
