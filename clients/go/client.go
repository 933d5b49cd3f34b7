package wsbus

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Close codes a gateway ends a connection with, besides RFC 6455's.
const (
	CloseSlowConsumer = 4001 // history cannot catch it up: resume
	CloseDraining     = 4002 // the node drains: reconnect, another serves
	CloseTokenExpired = 4003 // fetch a new token and reconnect
)

// State is the connection's state, as Options.OnState is told it.
type State int

// The states of a Client's connection.
const (
	Connecting State = iota
	Open
	Closed
)

func (s State) String() string {
	return [...]string{"connecting", "open", "closed"}[s]
}

// Store keeps cursors across restarts of the application: a file, a
// database, anything with string keys and values. Nil means in memory.
// Get and Set are called from the client's goroutines and from
// Subscribe's caller, so an implementation must be safe for concurrent
// use.
type Store interface {
	Get(key string) (value string, ok bool)
	Set(key, value string)
}

// Options configures a Client. Zero values mean the documented defaults.
type Options struct {
	// Token is a JWT sent as Authorization: Bearer. TokenFunc, when set,
	// is asked for one before the first connection, again shortly before
	// each token's exp (sent as a refresh), and after the gateway refused
	// one (HTTP 401, close code 4003).
	Token     string
	TokenFunc func(ctx context.Context) (string, error)
	// User names the subject on an --insecure gateway (?user=).
	User string
	// Store keeps cursors across restarts, under the URL and topic.
	Store Store
	// Header is sent with every handshake.
	Header http.Header
	// PingInterval: after this long without a message the client pings;
	// after PongTimeout more without one it takes the connection for dead
	// and reconnects. Zero values mean 20 s and 10 s (below the gateway's
	// default idle timeout of 75 s, above its 25 s pings).
	PingInterval, PongTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a reconnect:
	// exponential with full jitter, so that clients dropped together do
	// not come back together. Zero values mean 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// OnState is told every change of the connection's state; with
	// Closed, why the connection ended or could not be made (a
	// wsutil.ClosedError with the gateway's close code, a ws.StatusError
	// with the HTTP status of a refused handshake, a network error), or
	// nil when Run ends.
	OnState func(State, error)
	// OnError is handed the gateway's error messages (a refused
	// subscription, a bad ack).
	OnError func(Message)
	// NetDial dials the gateway; nil means net.Dialer's DialContext.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (o Options) withDefaults() Options {
	if o.PingInterval <= 0 {
		o.PingInterval = 20 * time.Second
	}
	if o.PongTimeout <= 0 {
		o.PongTimeout = 10 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(10*time.Second, o.MinBackoff)
	}
	return o
}

// SubscribeOptions configures one subscription.
type SubscribeOptions struct {
	// Since is where to start when the Store holds no cursor for the
	// topic: "" for new events only, "0" for everything retained, "acked"
	// for what follows the subject's acknowledged cursor, or an event ID.
	Since string
	// OnEvent is handed each event once, in order, on the client's reader
	// goroutine. When nil, events go to Events() instead.
	OnEvent func(Event)
	// OnSubscribed is told every answer to the subscription, first and
	// after every reconnect.
	OnSubscribed func(Subscribed)
	// OnGap is told of events the application will not be handed.
	OnGap func(Gap)
	// Buffer is the capacity of Events() when OnEvent is nil. Zero value
	// means 256. A full channel holds up the connection's reader. With a
	// Store, an event's cursor is stored once the application has taken
	// the event after it, seen when the next event arrives, on a quiet
	// connection at the next pong (PingInterval), and when a connection
	// ends (Run returning among them): after a restart the
	// event it was handling, and those it took since, may be handed over
	// again, never lost.
	Buffer int
}

// Client is a connection to a gateway and its subscriptions, which it
// keeps across reconnects. Subscribe, Ack and Close may be called from any
// goroutine, before or during Run.
type Client struct {
	url  string
	opts Options

	// Lock order: wmu before mu. Writes that must keep their order with
	// the connection's first subscribes (Subscribe, Unsubscribe, the
	// session start) hold wmu from the moment they read c.conn.
	mu     sync.Mutex
	subs   map[string]*Subscription
	conn   net.Conn          // the open connection; nil between connections
	unsubs map[string]int    // unsubscribes sent on conn and not yet answered, by topic
	acks   map[string]string // acks made while not connected, by topic
	token  string
	fresh  bool          // token must be fetched again before the next connection
	retry  []*time.Timer // subscribes to send again on conn (refused as unavailable); stopped with it
	closed chan struct{}
	once   sync.Once

	wmu sync.Mutex // serializes writes to conn
}

// Subscription is one topic of a Client.
type Subscription struct {
	c      *Client
	topic  string
	opts   SubscribeOptions
	cursor Cursor // guarded by c.mu
	active bool   // its subscribed arrived on this connection; guarded by c.mu
	events chan Event
	done   chan struct{}
	once   sync.Once

	// handed holds, with a Store and Events(), the cursors of the events
	// put on the channel from the newest the application may still be
	// handling on; the reader goroutine's alone.
	handed []Cursor
}

// New returns a Client of the gateway at url (ws:// or wss://, path
// /v1/ws). It connects when Run is called.
func New(url string, opts Options) *Client {
	return &Client{
		url: url, opts: opts.withDefaults(), token: opts.Token,
		subs: map[string]*Subscription{}, unsubs: map[string]int{}, acks: map[string]string{}, closed: make(chan struct{}),
	}
}

// Subscribe adds a subscription to topic, sent at once when connected and
// on every connection after. Subscribing to a topic twice replaces the
// first subscription.
func (c *Client) Subscribe(topic string, opts SubscribeOptions) *Subscription {
	s := &Subscription{c: c, topic: topic, opts: opts, done: make(chan struct{})}
	if opts.OnEvent == nil {
		s.events = make(chan Event, cmp.Or(opts.Buffer, 256))
	}
	s.cursor.ID = opts.Since
	if v, ok := c.load(topic); ok {
		s.cursor = v
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	old := c.subs[topic]
	c.subs[topic] = s
	conn := c.conn
	var msgs [][]byte
	if conn != nil && old != nil {
		// The gateway knows the topic: end the old subscription first;
		// what arrives for the topic until it is answered is the old one's.
		msgs = append(msgs, unsubscribeMessage(topic))
		c.unsubs[topic]++
	}
	msgs = append(msgs, s.subscribeLocked())
	c.mu.Unlock()
	if old != nil {
		old.close()
	}
	if conn != nil {
		_ = c.writeLocked(conn, msgs...)
	}
	return s
}

func unsubscribeMessage(topic string) []byte {
	msg, _ := json.Marshal(map[string]string{"type": "unsubscribe", "topic": topic})
	return msg
}

// Events returns the events of a subscription made without OnEvent. It
// is not closed: select on it with the context that Run was given.
func (s *Subscription) Events() <-chan Event { return s.events }

// Cursor returns the subscription's cursor: the last event handed over.
func (s *Subscription) Cursor() Cursor {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.cursor
}

// Unsubscribe ends the subscription.
func (s *Subscription) Unsubscribe() {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	conn := c.conn
	mine := c.subs[s.topic] == s
	if mine {
		delete(c.subs, s.topic)
		if conn != nil {
			c.unsubs[s.topic]++
		}
	}
	c.mu.Unlock()
	s.close()
	if mine && conn != nil {
		_ = c.writeLocked(conn, unsubscribeMessage(s.topic))
	}
}

func (s *Subscription) close() { s.once.Do(func() { close(s.done) }) }

// subscribeLocked returns the subscribe message that resumes s.
func (s *Subscription) subscribeLocked() []byte {
	return s.cursor.Subscribe(s.topic)
}

// Ack acknowledges the events of topic up to id for the connection's
// subject, on every device. Made while not connected, it is sent on the
// next connection.
func (c *Client) Ack(topic, id string) error {
	msg, _ := json.Marshal(map[string]string{"type": "ack", "topic": topic, "id": id})
	c.mu.Lock()
	conn := c.conn
	if conn == nil {
		if prev, ok := c.acks[topic]; !ok || idLess(prev, id) {
			c.acks[topic] = id
		}
	}
	c.mu.Unlock()
	if conn == nil {
		return nil
	}
	return c.write(conn, msg)
}

// Close ends Run and every subscription.
func (c *Client) Close() {
	c.once.Do(func() { close(c.closed) })
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
}

// Run connects and keeps the client connected until ctx ends or Close is
// called, resuming every subscription after each drop, and returns nil
// then. Nothing else ends it: network errors, refused handshakes and a
// failing TokenFunc are retried with backoff.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	attempt := 0
	for ctx.Err() == nil {
		c.state(Connecting, nil)
		opened, err := c.session(ctx)
		c.storeAllTaken()
		if ctx.Err() != nil {
			c.state(Closed, nil)
		} else {
			c.state(Closed, err)
		}
		if ctx.Err() != nil {
			return nil
		}
		if opened {
			attempt = 0
		}
		wait := c.backoff(attempt)
		attempt++
		var closed wsutil.ClosedError
		if errors.As(err, &closed) {
			switch closed.Code {
			case CloseDraining, CloseSlowConsumer, CloseTokenExpired:
				// At once, but jittered: a draining node sends its
				// clients away in a stream (--drain-rate), and they
				// should not arrive elsewhere in lockstep.
				wait = rand.N(quickJitter)
				if closed.Code == CloseTokenExpired {
					c.setFresh()
				}
			}
		}
		var refused ws.StatusError
		if errors.As(err, &refused) && int(refused) == http.StatusUnauthorized {
			c.setFresh()
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// quickJitter bounds the wait before reconnecting after a close that asks
// for it at once (4001, 4002, 4003).
const quickJitter = 250 * time.Millisecond

// backoff returns the wait before reconnect attempt n (0 first): a random
// time up to MinBackoff doubled n times, at most MaxBackoff.
func (c *Client) backoff(n int) time.Duration {
	// Doubled step by step: MinBackoff<<n overflows (17 s << 29 does).
	ceiling := c.opts.MinBackoff
	for ; n > 0 && ceiling < c.opts.MaxBackoff; n-- {
		if ceiling > c.opts.MaxBackoff/2 {
			ceiling = c.opts.MaxBackoff
		} else {
			ceiling *= 2
		}
	}
	return rand.N(min(ceiling, c.opts.MaxBackoff)) + 1
}

func (c *Client) setFresh() {
	if c.opts.TokenFunc != nil {
		c.mu.Lock()
		c.fresh = true
		c.mu.Unlock()
	}
}

func (c *Client) state(s State, err error) {
	if c.opts.OnState != nil {
		c.opts.OnState(s, err)
	}
}

// session runs one connection until it ends. opened reports whether the
// gateway accepted it.
func (c *Client) session(ctx context.Context) (opened bool, err error) {
	token, err := c.currentToken(ctx)
	if err != nil {
		return false, err
	}
	conn, br, err := c.dial(ctx, token)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var src io.Reader = conn
	if br != nil {
		src = br // frames the gateway sent right behind its handshake answer
	}
	// Pongs and close replies go out through the same lock as messages,
	// each with its own deadline: the last message's may be long past.
	rw := struct {
		io.Reader
		io.Writer
	}{src, writerFunc(func(p []byte) (int, error) {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(c.opts.PongTimeout))
		return conn.Write(p)
	})}

	c.wmu.Lock()
	c.mu.Lock()
	c.conn = conn
	c.unsubs = map[string]int{}
	msgs := make([][]byte, 0, len(c.subs)+len(c.acks))
	for _, s := range c.subs {
		s.active = false
		msgs = append(msgs, s.subscribeLocked())
	}
	for topic, id := range c.acks {
		b, _ := json.Marshal(map[string]string{"type": "ack", "topic": topic, "id": id})
		msgs = append(msgs, b)
	}
	clear(c.acks)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.conn = nil
		for _, t := range c.retry {
			t.Stop()
		}
		c.retry = nil
		c.mu.Unlock()
	}()
	c.state(Open, nil)
	err = c.writeLocked(conn, msgs...)
	c.wmu.Unlock()
	if err != nil {
		return true, err
	}

	var lastRead atomic.Int64
	lastRead.Store(time.Now().UnixNano())
	// keepalive ends with the session, a token refresh under way too
	// (its context), and the session waits for it: nothing of the
	// client runs once Run has returned.
	kctx, stopKeepalive := context.WithCancel(ctx)
	var keeping sync.WaitGroup
	keeping.Go(func() { c.keepalive(kctx, conn, token, &lastRead, kctx.Done()) })
	defer keeping.Wait()
	defer stopKeepalive()
	for {
		data, _, err := wsutil.ReadServerData(rw)
		if err != nil {
			return true, err
		}
		lastRead.Store(time.Now().UnixNano())
		var m Message
		if json.Unmarshal(data, &m) != nil {
			continue // not ours to judge: the server's bug
		}
		c.handle(ctx, &m)
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// write sends one text message on conn.
func (c *Client) write(conn net.Conn, msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(conn, msg)
}

// writeLocked sends text messages on conn, in order; c.wmu is held.
func (c *Client) writeLocked(conn net.Conn, msgs ...[]byte) error {
	for _, msg := range msgs {
		_ = conn.SetWriteDeadline(time.Now().Add(c.opts.PongTimeout))
		if err := wsutil.WriteClientText(conn, msg); err != nil {
			return err
		}
	}
	return nil
}

// dial opens a connection to the gateway, with the token and user.
func (c *Client) dial(ctx context.Context, token string) (net.Conn, io.Reader, error) {
	target, err := url.Parse(c.url)
	if err != nil {
		return nil, nil, err
	}
	if c.opts.User != "" {
		q := target.Query()
		q.Set("user", c.opts.User)
		target.RawQuery = q.Encode()
	}
	h := c.opts.Header.Clone()
	if token != "" {
		if h == nil {
			h = http.Header{}
		}
		h.Set("Authorization", "Bearer "+token)
	}
	d := ws.Dialer{NetDial: c.opts.NetDial, Timeout: 10 * time.Second}
	if h != nil {
		d.Header = ws.HandshakeHeaderHTTP(h)
	}
	conn, br, _, err := d.Dial(ctx, target.String())
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		return conn, nil, nil
	}
	return conn, br, nil
}

// currentToken returns the token to connect with, asking TokenFunc for
// one when there is none yet or the last was refused.
func (c *Client) currentToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	token, fresh := c.token, c.fresh
	c.mu.Unlock()
	if c.opts.TokenFunc == nil || token != "" && !fresh {
		return token, nil
	}
	token, err := c.opts.TokenFunc(ctx)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.token, c.fresh = token, false
	c.mu.Unlock()
	return token, nil
}

// keepalive pings a quiet connection and closes a dead one, and refreshes
// the token before it expires, until done.
func (c *Client) keepalive(ctx context.Context, conn net.Conn, token string, lastRead *atomic.Int64, done <-chan struct{}) {
	tick := time.NewTicker(min(c.opts.PingInterval, c.opts.PongTimeout) / 4)
	defer tick.Stop()
	var refresh <-chan time.Time
	var refreshTimer *time.Timer
	// Each token, the refreshed ones too, is refreshed a fifth of its life
	// (at most a minute) before it ends.
	refreshBefore := func(token string) {
		exp, ok := tokenExpiry(token)
		if !ok || c.opts.TokenFunc == nil {
			return
		}
		left := time.Until(exp)
		refreshTimer = time.NewTimer(max(left-min(left/5, time.Minute), 0))
		refresh = refreshTimer.C
	}
	refreshBefore(token)
	defer func() {
		if refreshTimer != nil {
			refreshTimer.Stop()
		}
	}()
	pinged := false
	for {
		select {
		case <-done:
			return
		case <-refresh:
			refresh = nil
			if fresh, err := c.opts.TokenFunc(ctx); err == nil {
				c.mu.Lock()
				c.token = fresh
				c.mu.Unlock()
				msg, _ := json.Marshal(map[string]string{"type": "refresh", "token": fresh})
				_ = c.write(conn, msg)
				refreshBefore(fresh)
			}
		case now := <-tick.C:
			quiet := now.Sub(time.Unix(0, lastRead.Load()))
			switch {
			case quiet < c.opts.PingInterval:
				pinged = false
			case quiet >= c.opts.PingInterval+c.opts.PongTimeout:
				_ = conn.Close() // dead: the reader fails and Run reconnects
				return
			case !pinged:
				pinged = true
				_ = c.write(conn, []byte(`{"type":"ping"}`))
			}
		}
	}
}

// handle takes one message of the gateway.
func (c *Client) handle(ctx context.Context, m *Message) {
	c.mu.Lock()
	if c.answersUnsubscribeLocked(m) {
		c.mu.Unlock()
		return
	}
	switch m.Type {
	case "subscribed", "event":
	case "error":
		if s := c.subs[m.Topic]; m.Code == "unavailable" && s != nil && !s.active && c.conn != nil {
			c.retryLocked(s, c.conn)
		}
		c.mu.Unlock()
		if c.opts.OnError != nil {
			c.opts.OnError(*m)
		}
		return
	case "pong":
		// Asked for after a quiet spell: the events taken from Events()
		// since the last one handed over are stored now.
		c.mu.Unlock()
		c.storeAllTaken()
		return
	default:
		c.mu.Unlock()
		return // refreshed: nothing to do
	}
	s := c.subs[m.Topic]
	if s == nil || m.Type == "event" && !s.active {
		c.mu.Unlock()
		return // unsubscribed since, or not yet answered on this connection
	}
	var gap *Gap
	fresh := true
	if m.Type == "subscribed" {
		s.active = true
		gap = s.cursor.Subscribed(m)
	} else {
		fresh, gap = s.cursor.Event(m.ID, m.Seq)
		if gap != nil {
			gap.Topic = m.Topic
		}
	}
	cur := s.cursor
	c.mu.Unlock()
	if !fresh {
		return // had it: sent twice or out of order
	}
	if m.Type == "subscribed" {
		if s.opts.OnEvent != nil || len(s.handed) == 0 {
			c.save(m.Topic, cur) // else the stored cursor stays behind events not yet handled
		}
		if s.opts.OnSubscribed != nil {
			s.opts.OnSubscribed(Subscribed{Topic: m.Topic, Recovered: m.Recovered, Epoch: m.Epoch, Head: m.Head,
				Seq: m.Seq, Missed: m.Missed, Acked: m.Acked, Unread: m.Unread})
		}
	}
	if gap != nil && s.opts.OnGap != nil {
		s.opts.OnGap(*gap)
	}
	if m.Type == "event" && s.deliver(ctx, Event{Topic: m.Topic, ID: m.ID, Seq: m.Seq, Data: m.Data}) {
		c.handled(s, cur)
	}
}

// handled stores what the application is surely done with, so that one
// that dies while handling an event gets it again after a restart. With
// OnEvent, that is the event it returned from. With Events(), it is the
// event before the newest one taken from the channel: taking the next is
// what says it is done with one (see storeTaken).
func (c *Client) handled(s *Subscription, cur Cursor) {
	if c.opts.Store == nil {
		return
	}
	if s.opts.OnEvent != nil {
		c.save(s.topic, cur)
		return
	}
	s.handed = append(s.handed, cur)
	c.storeTaken(s)
}

// storeAllTaken runs storeTaken for every subscription with events
// handed over to Events() and not yet stored.
func (c *Client) storeAllTaken() {
	c.mu.Lock()
	var subs []*Subscription
	for _, s := range c.subs {
		if len(s.handed) > 0 {
			subs = append(subs, s)
		}
	}
	c.mu.Unlock()
	for _, s := range subs {
		c.storeTaken(s)
	}
}

// storeTaken stores, for Events(), the cursor of the newest event the
// application took another one after. It runs when an event is put on the
// channel, when a pong arrives (a ping follows PingInterval of quiet) and
// when a connection ends, so after a restart the application may be
// handed again the event it was handling and those it took since the last
// of these. Only Run's goroutine, which reads the connection, touches
// s.handed.
func (c *Client) storeTaken(s *Subscription) {
	// len is read as the application takes: it may count one still there
	// that was just taken, which only stores an older cursor.
	taken := len(s.handed) - len(s.events)
	if taken < 2 {
		return
	}
	c.save(s.topic, s.handed[taken-2])
	// Resliced, not copied: append moves the rest (at most Buffer+1)
	// when it needs room.
	s.handed = s.handed[taken-1:]
}

// retryLocked sends s's subscribe again on conn in 0.5 to 1.5 s: the
// gateway refused it as unavailable (Redis did not answer in time).
func (c *Client) retryLocked(s *Subscription, conn net.Conn) {
	c.retry = append(c.retry, time.AfterFunc(500*time.Millisecond+rand.N(time.Second), func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		c.mu.Lock()
		if c.conn != conn || c.subs[s.topic] != s || s.active {
			c.mu.Unlock()
			return // the connection or the subscription is gone, or it took
		}
		msg := s.subscribeLocked()
		c.mu.Unlock()
		_ = c.writeLocked(conn, msg)
	}))
}

// answersUnsubscribeLocked reports whether m is of a topic with an
// unsubscribe not yet answered on this connection: the old subscription's
// messages until the answer ("unsubscribed", or not_subscribed when the
// subscribe had not taken effect), which are none of the application's.
func (c *Client) answersUnsubscribeLocked(m *Message) bool {
	if c.unsubs[m.Topic] == 0 {
		return false
	}
	if m.Type == "unsubscribed" || m.Type == "error" && m.Code == "not_subscribed" {
		c.unsubs[m.Topic]--
	}
	return true
}

// deliver hands e to the application and reports whether it took it.
func (s *Subscription) deliver(ctx context.Context, e Event) bool {
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(e)
		return true
	}
	select {
	case s.events <- e:
		return true
	case <-s.done:
	case <-ctx.Done():
	}
	return false
}

func (c *Client) storeKey(topic string) string { return c.url + " " + topic }

func (c *Client) load(topic string) (Cursor, bool) {
	if c.opts.Store == nil {
		return Cursor{}, false
	}
	v, ok := c.opts.Store.Get(c.storeKey(topic))
	if !ok {
		return Cursor{}, false
	}
	var cur Cursor
	if cur.UnmarshalText([]byte(v)) != nil || cur.ID == "" {
		return Cursor{}, false
	}
	return cur, true
}

func (c *Client) save(topic string, cur Cursor) {
	if c.opts.Store != nil {
		b, _ := cur.MarshalText()
		c.opts.Store.Set(c.storeKey(topic), string(b))
	}
}
