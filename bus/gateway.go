package bus

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/auth"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

var _ ws.OverflowHandler = (*Gateway)(nil)

// GatewayConfig configures a Gateway. Zero values mean the documented
// defaults.
type GatewayConfig struct {
	// Redis is the bus's Redis. Required.
	Redis redis.UniversalClient
	// Keys names the bus's keys.
	Keys streams.Keys
	// Partitions is the bus's partition count. Required.
	Partitions int
	// MaxSubscriptions bounds the topics of one connection. Zero value
	// means 128.
	MaxSubscriptions int
	// HistoryPage is how many history events one Redis read returns while
	// a client resumes, or a lagging client or topic catches up. Zero value
	// means 500.
	HistoryPage int
	// MaxPending bounds the live events held for a subscription while its
	// history is sent; past it the client is closed with 4001 and resumes.
	// Zero value means 10000.
	MaxPending int
	// HistoryBytes bounds the event data of one history page read to
	// resume a client or catch up a lagging client or topic: HistoryPage
	// events of 64 KiB would be 32 MiB, for every resume reading at once.
	// A resume's pages and a topic's are cut by Redis (streams.Page); a
	// lagging client's are sized by the largest event of its last page
	// (gateway_lag.go). Zero value means 256 KiB, a quarter of the default
	// --max-queue, so page and queue together stay near it.
	HistoryBytes int
	// MaxData is the largest event payload: a lagging client's first
	// history page is sized for events this big. Zero value means
	// streams.DefaultMaxData.
	MaxData int
	// ReadyTimeout bounds the wait for Redis to confirm a live channel
	// subscription. Zero value means 5 s.
	ReadyTimeout time.Duration
	// Auth verifies client tokens. Nil means no authentication: every
	// client may read every topic. (A nil *auth.Verifier stored in it is
	// not a nil Auth: leave the field unset instead.)
	Auth TokenVerifier
	// AllowedOrigins lists the Origins browsers may connect from; "*"
	// allows all. Empty means only the gateway's own host. Clients that
	// send no Origin (not browsers) are not checked.
	AllowedOrigins []string
	// AckFlush is how long acks gather before one pipeline writes them:
	// the longest an ack waits, and what lets a burst of acks cost one
	// round trip. Zero value means 5 ms.
	AckFlush time.Duration
	// MaxAcks bounds the distinct IDs one connection acknowledged in the
	// batch being gathered (and so what it holds while a batch is
	// written: twice as many), so a Redis that does not answer cannot make
	// acks pile up without bound. Past it an ack on a topic the
	// connection has acks of in the batch replaces its lowest there; one
	// on another topic is refused with too_many_acks. Zero value means
	// 256.
	MaxAcks int
	// CanaryKey admits the node's own canary client (app/canary.go): a
	// connection presenting it ("Authorization: Wsbus-Canary KEY") needs no
	// token and may subscribe to the canary topics, and only to them (see
	// CanaryPrefix). Empty means no connection is admitted as the canary.
	CanaryKey string
	// EpochCheck is how often the partitions' epochs are read, so that the
	// subscribers of a partition whose data Redis lost are closed with 4001
	// to resume (gateway_epoch.go). Zero value means 1 s.
	EpochCheck time.Duration
	// Logger receives Redis errors. Zero value means slog.Default().
	Logger *slog.Logger
	// DeliveryLatency, when set, is called once for each event a topic
	// delivers to its subscribers (not once per subscriber; the canary's
	// topics left out), with the time
	// from the event's XADD (the time in its ID, on Redis's clock) to its
	// frame handed to every subscriber's connection. It runs under the
	// topic's lock: keep it quick (a histogram's Observe).
	DeliveryLatency func(time.Duration)
}

func (c GatewayConfig) withDefaults() (GatewayConfig, error) {
	if c.Redis == nil || c.Partitions <= 0 {
		return c, errors.New("bus: GatewayConfig needs Redis and Partitions")
	}
	if c.MaxSubscriptions <= 0 {
		c.MaxSubscriptions = 128
	}
	if c.HistoryPage <= 0 {
		c.HistoryPage = 500
	}
	if c.HistoryBytes <= 0 {
		c.HistoryBytes = 256 << 10
	}
	if c.MaxData <= 0 {
		c.MaxData = streams.DefaultMaxData
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 10000
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = 5 * time.Second
	}
	if c.AckFlush <= 0 {
		c.AckFlush = 5 * time.Millisecond
	}
	if c.MaxAcks <= 0 {
		c.MaxAcks = 256
	}
	if c.EpochCheck <= 0 {
		c.EpochCheck = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Gateway serves WebSocket clients: subscriptions, resume from history and
// live fan-out from sharded pub/sub. It implements ws.OverflowHandler:
// served with ws.OverflowDrop, it catches clients that fall behind up
// from history (see gateway_lag.go); with ws.OverflowClose they are
// closed with 4001.
//
// Locks and goroutines: see the package documentation (doc.go).
type Gateway struct {
	cfg      GatewayConfig
	hist     historyReader // see resume.go
	reads    *coalescer
	expiries *expiries
	acks     *acker
	wg       sync.WaitGroup // goroutines Close waits for
	ctx      context.Context
	cancel   context.CancelFunc
	stats    gatewayCounters
	lagging  sync.WaitGroup // catchUpClient goroutines; Add under mu.RLock while ctx is live
	fan      *fanOuts       // the shards that fan live events out (gateway_shards.go)
	// By partition: the epochs as watchEpochs last read them, and those it
	// is to check the topics of at its next read whatever it reads.
	epochs       []string
	epochRecheck []bool

	mu     sync.RWMutex // read-locked per live event, written on (un)subscribe
	topics map[string]*topic
	parts  []*liveConn // by partition, made on first use
	shared *liveConn   // on a single Redis, the one in every slot of parts
}

// client is the Gateway's state of one connection.
type client struct {
	mu     sync.Mutex
	subs   []*subscription // few per connection: a slice is smaller than a map
	claims *auth.Claims    // nil without authentication

	// subjectp is who acknowledges for this connection: its first
	// token's sub (a refresh keeps the subject), or ?user= without
	// authentication; nil for none. Set at Open, read-only after. A
	// pointer, not a string, and the acks it has waiting counted in the
	// acker, not here: the client stays in the 128-byte size class.
	subjectp *string

	// Guarded by expiries.mu.
	expAt  int64 // unix nanoseconds
	expIdx int32 // index in the expiry heap, or expOut or expGone (see expiryHeap)

	closed    bool // guarded by mu
	firstUsed bool // first has been handed out; guarded by mu
	lagRun    bool // a catchUpClient runs; guarded by mu
	lagAgain  bool // an overflow came while it ran: it looks again before ending; guarded by mu

	// Most connections hold one topic: its subscription and the array of
	// subs live in the client's own memory, one heap object for the three.
	// first.conn is the connection's from newClient on, handed out or
	// not (see conn).
	first subscription
	one   [1]*subscription
}

// clientConn is what the Gateway does with a client's connection: a
// *ws.Conn; in the resume unit tests (resume_test.go), a fake that keeps
// what it is sent.
type clientConn interface {
	Send(f ws.Frame) error
	SendWait(f ws.Frame) error
	SendWaitIf(f ws.Frame, ok func() bool) error
	Offer(f ws.Frame) error
	Recover(fn func(dropped []ws.Frame)) bool
	Close(code uint16, reason string)
}

var _ clientConn = (*ws.Conn)(nil)

// conn returns the client's connection. It is kept in the first
// subscription, set once by newClient, rather than in a field of its own:
// the client stays in the 128-byte size class.
func (cl *client) conn() clientConn { return cl.first.conn }

// subject returns who acknowledges for the connection; "" for none.
func (cl *client) subject() string {
	if cl.subjectp == nil {
		return ""
	}
	return *cl.subjectp
}

// newClient returns the state of connection c.
func newClient(c clientConn) *client {
	cl := &client{expIdx: expOut}
	cl.first.conn = c
	cl.subs = cl.one[:0]
	return cl
}

// newSubscription returns a subscription of the client's connection to t:
// the client's own first one, or a new one after it. first is handed out
// once only, so a subscription never changes meaning while a history read
// holds it.
func (cl *client) newSubscription(t *topic) *subscription {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s := &cl.first
	if cl.firstUsed {
		s = &subscription{conn: cl.conn()}
	}
	cl.firstUsed = true
	s.topic = t
	s.idx.Store(-1)
	return s
}

// NewGateway returns a Gateway; Close stops it.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{
		cfg:          cfg,
		hist:         streams.NewHistory(cfg.Redis, cfg.Keys, cfg.Partitions),
		reads:        newCoalescer(),
		ctx:          ctx,
		cancel:       cancel,
		topics:       make(map[string]*topic),
		parts:        make([]*liveConn, cfg.Partitions),
		expiries:     newExpiries(),
		epochs:       make([]string, cfg.Partitions),
		epochRecheck: make([]bool, cfg.Partitions),
	}
	g.acks = newAcker(g)
	g.fan = g.startFanOuts()
	g.wg.Add(4)
	go func() {
		defer g.wg.Done()
		g.acks.run(ctx)
	}()
	go func() {
		defer g.wg.Done()
		g.watchEpochs()
	}()
	go func() {
		defer g.wg.Done()
		g.sweep()
	}()
	go func() {
		defer g.wg.Done()
		g.expiries.run(ctx.Done())
	}()
	return g, nil
}

// Close writes the acks still gathered and stops every goroutine the
// Gateway started: its pub/sub connections' owners (which close them),
// their catch-ups, its fan-out shards, and the catch-ups of lagging clients, which end once
// their history reads fail or their connections close. It waits on no
// Redis reply.
func (g *Gateway) Close() error {
	g.mu.Lock()
	g.cancel() // under mu: a goroutine started under mu starts before it, or not at all
	g.mu.Unlock()
	g.wg.Wait()
	g.lagging.Wait()
	return nil
}

// Open starts a connection, subscribing it when its URL names a topic.
func (g *Gateway) Open(c *ws.Conn, r *ws.Request) {
	cl := newClient(c)
	if r.State == canaryClaims {
		cl.claims = canaryClaims // the node's canary: no subject, no expiry (auth.go)
	} else if claims, ok := r.State.(*auth.Claims); ok {
		cl.claims = claims
		if claims.Subject != "" {
			cl.subjectp = &claims.Subject
		}
		g.expiries.set(cl, claims.Expires)
	} else if g.cfg.Auth == nil {
		if user, _ := queryValue(r.URI, "user"); user != "" {
			cl.subjectp = &user
		}
	}
	c.SetValue(cl)
	g.stats.connections.Add(1)
	topic, ok := queryValue(r.URI, "topic")
	if !ok {
		return // the common case: subscriptions come as messages
	}
	m := clientMessage{Type: "subscribe", Topic: topic}
	m.Epoch, _ = queryValue(r.URI, "epoch")
	if seq, ok := queryValue(r.URI, "seq"); ok {
		m.Seq = []byte(seq) // checked as a message's seq is
	}
	if since, ok := queryValue(r.URI, "since"); ok {
		m.Since = &since
	}
	g.subscribe(c, cl, m)
}

// queryValue returns the first value of key in the query of uri, unescaped
// as url.Values would have it, without building url.Values: an Open with
// ?topic= is on the path of every connection of a reconnect storm. Pairs
// that do not unescape are skipped, as url.URL.Query skips them.
func queryValue(uri []byte, key string) (string, bool) {
	_, query, _ := bytes.Cut(uri, []byte("?"))
	for len(query) > 0 {
		var pair []byte
		pair, query, _ = bytes.Cut(query, []byte("&"))
		if len(pair) == 0 || bytes.IndexByte(pair, ';') >= 0 {
			continue // url.ParseQuery skips these too
		}
		k, v, _ := bytes.Cut(pair, []byte("="))
		if bytes.ContainsAny(k, "%+") {
			if uk, err := url.QueryUnescape(string(k)); err != nil || uk != key {
				continue
			}
		} else if string(k) != key {
			continue
		}
		if bytes.ContainsAny(v, "%+") {
			if value, err := url.QueryUnescape(string(v)); err == nil {
				return value, true
			}
			continue
		}
		return string(v), true
	}
	return "", false
}

// Message handles one client message.
func (g *Gateway) Message(c *ws.Conn, msg []byte) {
	cl := c.Value().(*client)
	m, err := decodeClientMessage(msg)
	if err != nil {
		g.sendError(c, codeBadRequest, "", clientText(err))
		return
	}
	switch m.Type {
	case "subscribe":
		g.subscribe(c, cl, m)
	case "unsubscribe":
		g.unsubscribe(c, cl, m.Topic)
	case "ping":
		_ = c.Send(pongFrame)
	case "refresh":
		g.refresh(c, cl, m.Token)
	case "ack":
		g.ack(c, cl, m)
	default:
		g.sendError(c, codeUnknownType, "", "unknown message type "+m.Type)
	}
}

// Closed drops a gone connection's subscriptions.
func (g *Gateway) Closed(c *ws.Conn) {
	cl, ok := c.Value().(*client)
	if !ok {
		return
	}
	g.stats.connections.Add(-1)
	g.expiries.remove(cl)
	cl.mu.Lock()
	cl.closed = true
	subs := cl.subs
	cl.subs = nil
	cl.mu.Unlock()
	for _, s := range subs {
		g.removeSub(s)
	}
}

func (g *Gateway) unsubscribe(c *ws.Conn, cl *client, topic string) {
	cl.mu.Lock()
	s := cl.findLocked(topic)
	if s != nil {
		cl.removeLocked(s)
	}
	cl.mu.Unlock()
	if s == nil {
		g.sendError(c, codeNotSubscribed, topic, "not subscribed to this topic")
		return
	}
	g.removeSub(s)
	_ = c.Send(ws.TextFrame(appendUnsubscribed(nil, topic)))
}

func (g *Gateway) sendError(c clientConn, code, topic, message string) {
	_ = c.Send(ws.TextFrame(appendError(nil, code, topic, message)))
}

var pongFrame = ws.TextFrame(pongMessage)

// GatewayStats is a snapshot of a Gateway's counters.
type GatewayStats struct {
	Connections   int64  // connections served
	Subscriptions int64  // subscriptions open
	Topics        int    // topics with a live channel subscription
	LiveEvents    uint64 // events received from pub/sub
	Resumes       uint64 // subscriptions that sent a cursor
	NotRecovered  uint64 // of them, answered recovered:false
	Missed        uint64 // events those answers reported missed, where known
	CatchUps      uint64 // topics caught up from history after a pub/sub loss
	Acks          uint64 // cursor moves written, after coalescing
	LagCatchUps   uint64 // overflows of lagging clients caught up from history
	Resets        uint64 // topics whose subscribers were closed with 4001 by a catch-up: Redis lost data, or trimmed it first
	Epochs        uint64 // partition epochs this gateway renewed: a topic's history went back under one
}

type gatewayCounters struct {
	connections, subscriptions        atomic.Int64
	liveEvents, resumes, notRecovered atomic.Uint64
	missed                            atomic.Uint64
	catchUps, acks, lagCatchUps       atomic.Uint64
	resets, epochs                    atomic.Uint64
}

// Stats returns the current counters.
func (g *Gateway) Stats() GatewayStats {
	g.mu.RLock()
	topics := len(g.topics)
	g.mu.RUnlock()
	return GatewayStats{
		Connections:   g.stats.connections.Load(),
		Subscriptions: g.stats.subscriptions.Load(),
		Topics:        topics,
		LiveEvents:    g.stats.liveEvents.Load(),
		Resumes:       g.stats.resumes.Load(),
		NotRecovered:  g.stats.notRecovered.Load(),
		Missed:        g.stats.missed.Load(),
		CatchUps:      g.stats.catchUps.Load(),
		Acks:          g.stats.acks.Load(),
		LagCatchUps:   g.stats.lagCatchUps.Load(),
		Resets:        g.stats.resets.Load(),
		Epochs:        g.stats.epochs.Load(),
	}
}
