package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/streams"
	wsbusws "github.com/wsbus/wsbus/ws"
)

// The baselines a run measures the gateway against, each in a process of
// its own:
//
//   - naive: net/http and gorilla/websocket with a reader and a writer
//     goroutine per connection, gorilla's buffered writer, a channel per
//     connection: the "naive" server of Mail.ru's article.
//   - floor: the WebSocket handshake, then nothing per connection but its
//     fd; a broadcast is one frame, encoded once, written without blocking
//     to every fd by a goroutine per core, a full socket finished when
//     epoll says it has room (floor_linux.go says why nothing can deliver
//     to the same sockets for less).
//
// Both take events the way the gateway does, from the topic's live channel
// that the bus's owner (a wsbus node) publishes to, and speak the part of
// the protocol bench clients use: ?topic= (with ?since= and ?epoch= for the
// naive server's resumes), "subscribed", then events. They need a single
// Redis, not a Cluster.
const (
	Naive = "naive"
	Floor = "floor"
)

// BaselineConfig describes a baseline server process.
type BaselineConfig struct {
	Kind   string // Naive or Floor
	Listen net.Listener
	Redis  redis.UniversalClient
	Keys   streams.Keys
}

// ServeBaseline serves a baseline until ctx ends: the WebSocket endpoint at
// /v1/ws and the process's metrics at /metrics, as the gateway has them.
func ServeBaseline(ctx context.Context, cfg BaselineConfig) error {
	if cfg.Kind != Naive && cfg.Kind != Floor {
		return fmt.Errorf("bench: unknown baseline %q (want %s or %s)", cfg.Kind, Naive, Floor)
	}
	n, err := streams.Partitions(ctx, cfg.Redis, cfg.Keys)
	if err != nil {
		return err
	}
	s := &baseline{
		cfg:     cfg,
		n:       n,
		history: streams.NewHistory(cfg.Redis, cfg.Keys, n),
		ps:      cfg.Redis.SSubscribe(ctx),
		topics:  map[string]*baseTopic{},
	}
	defer s.ps.Close()
	if cfg.Kind == Floor {
		if s.floor, err = newFloor(ctx); err != nil {
			return err
		}
		defer s.floor.wait()
	}
	go s.deliver(ctx)
	go returnMemory(ctx, &s.upgrades)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	if cfg.Kind == Naive {
		mux.HandleFunc("/v1/ws", s.serveNaive)
	} else {
		mux.HandleFunc("/v1/ws", s.serveFloor)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(cfg.Listen); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// returnMemory hands freed memory back to the OS once a burst of upgrades
// is over (upgrades counts them: some came, then none for a tick of 3 s),
// as the gateway does, so that RSS measures what the connections hold
// rather than the garbage of their handshakes. Not on every tick: a
// forced collection of the naive server's heap, with a goroutine stack a
// connection to scan, stalled its deliveries every 3 s by more than the
// capacity phase's 100 ms.
func returnMemory(ctx context.Context, upgrades *atomic.Uint64) {
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	var settled, last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			up := upgrades.Load()
			if up != settled && up == last {
				debug.FreeOSMemory()
				settled = up
			}
			last = up
		}
	}
}

type baseline struct {
	cfg     BaselineConfig
	n       int
	history *streams.History
	ps      *redis.PubSub
	floor   *floor // the floor's fan-out; nil for the naive server
	// upgrades counts the connections upgraded, for returnMemory.
	upgrades atomic.Uint64

	mu     sync.Mutex
	topics map[string]*baseTopic // by live channel
}

// baseTopic is one topic's naive connections (the floor's are in its
// shards).
type baseTopic struct {
	name  string
	naive map[*naiveConn]struct{}
}

// join returns the topic, subscribing its live channel when it is new.
func (s *baseline) join(ctx context.Context, topic string) (*baseTopic, error) {
	channel := s.cfg.Keys.Live(streams.Partition(topic, s.n), topic)
	s.mu.Lock()
	t, ok := s.topics[channel]
	if !ok {
		t = &baseTopic{name: topic, naive: map[*naiveConn]struct{}{}}
		s.topics[channel] = t
	}
	s.mu.Unlock()
	if !ok {
		// SSUBSCRIBE returns once Redis confirmed it.
		if err := s.ps.SSubscribe(ctx, channel); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// deliver hands every live event to its topic's connections.
func (s *baseline) deliver(ctx context.Context) {
	ch := s.ps.Channel(redis.WithChannelSize(1024))
	for {
		var m *redis.Message
		select {
		case <-ctx.Done():
			return
		case m = <-ch:
		}
		s.mu.Lock()
		t := s.topics[m.Channel]
		if t == nil {
			s.mu.Unlock()
			continue
		}
		if s.cfg.Kind == Naive {
			b := []byte(m.Payload)
			for c := range t.naive {
				c.live(b)
			}
			s.mu.Unlock()
			continue
		}
		s.mu.Unlock()
		s.floor.broadcast(ctx, m.Channel, wsbusws.TextFrameString(m.Payload).Bytes()) // encoded once, as the gateway does
	}
}

// serveFloor upgrades, answers "subscribed", and hands a duplicate of the
// socket's fd (non-blocking, as Go made it) to the floor's fan-out.
func (s *baseline) serveFloor(w http.ResponseWriter, r *http.Request) {
	topic := r.URL.Query().Get("topic")
	if topic == "" {
		http.Error(w, "topic required", http.StatusBadRequest)
		return
	}
	if _, err := s.join(r.Context(), topic); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	conn, _, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return
	}
	s.upgrades.Add(1)
	defer conn.Close()
	hello := wsbusws.TextFrame(bus.AppendSubscribed(nil, bus.Subscribed{Topic: topic})).Bytes()
	if _, err := conn.Write(hello); err != nil {
		return
	}
	fd, err := dupFD(conn)
	if err != nil {
		return
	}
	_ = s.floor.add(s.cfg.Keys.Live(streams.Partition(topic, s.n), topic), fd)
}

// naiveConn is one connection of the naive server.
type naiveConn struct {
	ws   *websocket.Conn
	send chan []byte

	mu      sync.Mutex
	resumed bool       // history sent: live events go to send
	held    [][]byte   // live events received before that
	last    streams.ID // newest history event sent
}

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

// serveNaive is the naive server's connection: this goroutine reads, a
// second one writes what the channel brings.
func (s *baseline) serveNaive(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	topic := q.Get("topic")
	if topic == "" {
		http.Error(w, "topic required", http.StatusBadRequest)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	s.upgrades.Add(1)
	// Closed when the reader ends, not left to the fd's finalizer: a
	// client gone held its fd until a collection, and the capacity
	// phase's connections then took the server past its fd limit.
	defer conn.Close()
	c := &naiveConn{ws: conn, send: make(chan []byte, 256)}
	go c.write()
	defer close(c.send)
	t, err := s.join(r.Context(), topic)
	if err != nil {
		return
	}
	s.mu.Lock()
	t.naive[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(t.naive, c)
		s.mu.Unlock()
	}()
	since := q.Get("since")
	if since == "" {
		since = "+" // only new events: nothing to read
	}
	var res streams.Resume
	if since != "+" {
		if res, err = s.history.Resume(r.Context(), topic, streams.Cursor{Since: since, Epoch: q.Get("epoch")}, streams.Page{Events: 1000}); err != nil {
			return
		}
	} else if res.Epoch, err = s.cfg.Redis.HGet(r.Context(), s.cfg.Keys.PartitionMeta(streams.Partition(topic, s.n)), "epoch").Result(); err != nil && !errors.Is(err, redis.Nil) {
		return
	}
	c.resume(topic, res)
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			return
		}
	}
}

// resume sends "subscribed" and the history, then the live events held
// meanwhile that the history did not have.
func (c *naiveConn) resume(topic string, res streams.Resume) {
	c.mu.Lock()
	defer c.mu.Unlock()
	msg := bus.AppendSubscribed(nil, bus.Subscribed{Topic: topic, Recovered: res.Recovered, Epoch: res.Epoch, Head: res.Head, HeadSeq: res.HeadSeq})
	c.send <- msg
	for _, e := range res.Events {
		c.send <- streams.AppendEvent(nil, topic, e.ID, e.Seq, []byte(e.Data))
		c.last = streams.MustParseID(e.ID)
	}
	for _, b := range c.held {
		if id, ok := streams.EventID(string(b)); ok {
			if parsed, err := streams.ParseID(id); err == nil && !c.last.Less(parsed) {
				continue // the history had it
			}
		}
		c.queue(b)
	}
	c.held, c.resumed = nil, true
}

// live is an event from the live channel.
func (c *naiveConn) live(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.resumed {
		c.held = append(c.held, b)
		return
	}
	c.queue(b)
}

// queue sends b; a full channel is a slow consumer, which is dropped.
func (c *naiveConn) queue(b []byte) {
	select {
	case c.send <- b:
	default:
		_ = c.ws.Close()
	}
}

// write is the connection's writer goroutine.
func (c *naiveConn) write() {
	for b := range c.send {
		if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
			_ = c.ws.Close()
		}
	}
}
