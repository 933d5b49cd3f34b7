package wsbus

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsbus/wsbus/internal/testutil"
)

// fakeGateway accepts WebSocket connections on a random port and hands
// them to the test, which plays the gateway.
type fakeGateway struct {
	url   string
	conns chan net.Conn
}

func newFakeGateway(tb testing.TB) *fakeGateway {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := &fakeGateway{url: "ws://" + ln.Addr().String() + "/v1/ws", conns: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if _, err := ws.Upgrade(conn); err != nil {
				_ = conn.Close()
				continue
			}
			g.conns <- conn
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		<-done
		close(g.conns)
		for conn := range g.conns {
			_ = conn.Close()
		}
	})
	return g
}

// accept returns the next connection, which the test closes.
func (g *fakeGateway) accept(tb testing.TB, within time.Duration) net.Conn {
	tb.Helper()
	select {
	case conn := <-g.conns:
		tb.Cleanup(func() { _ = conn.Close() })
		return conn
	case <-time.After(within):
		tb.Fatalf("no connection within %v", within)
		return nil
	}
}

// runClient runs c until the test ends and checks that Run returned.
func runClient(tb testing.TB, c *Client) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Run did not return after its context ended")
		}
	})
}

// quietWrites subscribes a client, takes its subscribe message and
// waits until the client has written nothing for well past its
// PongTimeout, the case of a client that only receives.
func quietWrites(t *testing.T, g *fakeGateway, opts Options) net.Conn {
	t.Helper()
	c := New(g.url, opts)
	c.Subscribe("t", SubscribeOptions{OnEvent: func(Event) {}})
	runClient(t, c)
	conn := g.accept(t, 5*time.Second)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := wsutil.ReadClientText(conn); err != nil {
		t.Fatalf("reading the subscribe message: %v", err)
	}
	<-time.After(4 * opts.PongTimeout) // what is under test is the time itself
	return conn
}

// TestClientAnswersPingAfterQuietWrites: a client that only receives
// still answers the gateway's pings, however long since it last wrote.
func TestClientAnswersPingAfterQuietWrites(t *testing.T) {
	g := newFakeGateway(t)
	conn := quietWrites(t, g, Options{PingInterval: time.Hour, PongTimeout: 50 * time.Millisecond})
	if err := ws.WriteFrame(conn, ws.NewPingFrame(nil)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(conn)
	if err != nil {
		t.Fatalf("waiting for the pong: %v (the client dropped the connection)", err)
	}
	if f.Header.OpCode != ws.OpPong {
		t.Fatalf("answer to a ping: opcode %v, want pong", f.Header.OpCode)
	}
}

// TestClientTakesCloseCodeAfterQuietWrites: a drain's 4002 reaches Run as
// such after a quiet spell, so the client comes back at once rather than
// after its backoff.
func TestClientTakesCloseCodeAfterQuietWrites(t *testing.T) {
	g := newFakeGateway(t)
	conn := quietWrites(t, g, Options{PingInterval: time.Hour, PongTimeout: 50 * time.Millisecond,
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	drain := ws.NewCloseFrame(ws.NewCloseFrameBody(CloseDraining, "draining"))
	if err := ws.WriteFrame(conn, drain); err != nil {
		t.Fatal(err)
	}
	g.accept(t, 5*time.Second)
}

// TestBackoffBounds: every wait is above zero and at most MaxBackoff,
// whatever the attempt and however large MinBackoff.
func TestBackoffBounds(t *testing.T) {
	for _, min := range []time.Duration{time.Millisecond, 100 * time.Millisecond, 30 * time.Second, time.Hour} {
		c := New("ws://127.0.0.1:1/v1/ws", Options{MinBackoff: min})
		for n := range 100 {
			if d := c.backoff(n); d <= 0 || d > c.opts.MaxBackoff+1 {
				t.Fatalf("MinBackoff %v, attempt %d: wait %v, want in (0, %v]", min, n, d, c.opts.MaxBackoff)
			}
		}
	}
}

// unsignedToken is a JWT with only exp, enough for the client, which
// reads exp without checking the signature.
func unsignedToken(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		enc([]byte(`{"sub":"u","exp":`+strconv.FormatInt(exp.Unix(), 10)+`}`)) + ".c2ln"
}

// TestClientRefreshesEveryToken: each token is refreshed before its exp,
// the refreshed ones too, on one connection: the gateway never has to
// cut it with 4003.
func TestClientRefreshesEveryToken(t *testing.T) {
	g := newFakeGateway(t)
	var calls atomic.Int32
	tokens := func(context.Context) (string, error) {
		calls.Add(1)
		return unsignedToken(time.Now().Add(2 * time.Second)), nil
	}
	c := New(g.url, Options{TokenFunc: tokens})
	c.Subscribe("t", SubscribeOptions{OnEvent: func(Event) {}})
	runClient(t, c)
	conn := g.accept(t, 5*time.Second)
	refreshes := 0
	for deadline := time.Now().Add(10 * time.Second); refreshes < 3; {
		_ = conn.SetReadDeadline(deadline)
		msg, err := wsutil.ReadClientText(conn)
		if err != nil {
			t.Fatalf("after %d refreshes (token function called %d times): %v", refreshes, calls.Load(), err)
		}
		var m struct{ Type, Token string }
		if json.Unmarshal(msg, &m) == nil && m.Type == "refresh" {
			exp, ok := tokenExpiry(m.Token)
			if !ok || time.Until(exp) <= 0 {
				t.Fatalf("refresh %d sent a token that expired at %v", refreshes+1, exp)
			}
			refreshes++
		}
	}
}

// memStore is a Store in memory.
type memStore struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *memStore) Get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok
}

func (s *memStore) Set(k, v string) { s.mu.Lock(); defer s.mu.Unlock(); s.m[k] = v }

// TestClientStoresAfterHandling: the Store learns an event's ID only once
// OnEvent has returned, so an application that dies while handling it
// gets it again after a restart (at least once), rather than never.
func TestClientStoresAfterHandling(t *testing.T) {
	g := newFakeGateway(t)
	store := &memStore{m: map[string]string{}}
	c := New(g.url, Options{Store: store})
	handled := make(chan string, 2)
	c.Subscribe("t", SubscribeOptions{OnEvent: func(e Event) {
		if v, _ := store.Get(c.storeKey("t")); strings.Contains(v, e.ID) {
			handled <- "the store already holds " + v + " while " + e.ID + " is being handled"
			return
		}
		handled <- ""
	}})
	runClient(t, c)
	conn := g.accept(t, 5*time.Second)
	for _, m := range []string{
		`{"type":"subscribed","topic":"t","recovered":true,"epoch":"e","head":"1-0","seq":1}`,
		`{"type":"event","topic":"t","id":"2-0","seq":2,"data":1}`,
		`{"type":"event","topic":"t","id":"3-0","seq":3,"data":1}`,
	} {
		if err := wsutil.WriteServerText(conn, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case msg := <-handled:
			if msg != "" {
				t.Fatal(msg)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("events not handed over")
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if v, _ := store.Get(c.storeKey("t")); !strings.Contains(v, `"3-0"`) {
			return fmt.Errorf("store holds %s after both events, want 3-0", v)
		}
		return nil
	})
}

// TestClientStoresAfterTaking: with Events(), the Store learns an
// event's ID only once the application has taken the event after it, so
// one that dies while handling an event, or before taking those in the
// channel, gets them again after a restart (a trial lost 256 events: the
// cursor was stored as each was put on the channel). What was taken is
// seen when the next event arrives, or at a pong.
func TestClientStoresAfterTaking(t *testing.T) {
	g := newFakeGateway(t)
	store := &memStore{m: map[string]string{}}
	c := New(g.url, Options{Store: store})
	sub := c.Subscribe("t", SubscribeOptions{Buffer: 4})
	runClient(t, c)
	conn := g.accept(t, 5*time.Second)
	send := func(msgs ...string) {
		t.Helper()
		for _, m := range msgs {
			if err := wsutil.WriteServerText(conn, []byte(m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	stored := func(want string) {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, func() error {
			if v, _ := store.Get(c.storeKey("t")); !strings.Contains(v, `"id":"`+want+`"`) {
				return fmt.Errorf("store holds %s, want %s", v, want)
			}
			return nil
		})
	}
	take := func(want string) {
		t.Helper()
		select {
		case e := <-sub.Events():
			if e.ID != want {
				t.Fatalf("took %s, want %s", e.ID, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not handed over", want)
		}
	}
	event := func(id string, seq int) string {
		return fmt.Sprintf(`{"type":"event","topic":"t","id":%q,"seq":%d,"data":1}`, id, seq)
	}
	send(`{"type":"subscribed","topic":"t","recovered":true,"epoch":"e","head":"1-0","seq":1}`,
		event("2-0", 2), event("3-0", 3), event("4-0", 4))
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(sub.Events()); n != 3 {
			return fmt.Errorf("%d events in the channel, want 3", n)
		}
		return nil
	})
	stored("1-0") // none taken
	take("2-0")
	take("3-0") // done with 2-0; 3-0 may be being handled
	send(event("5-0", 5))
	stored("2-0")
	take("4-0")
	take("5-0")
	// A reconnect's subscribed does not store its cursor (5-0) over the
	// events not surely handled.
	send(`{"type":"subscribed","topic":"t","recovered":true,"epoch":"e","head":"5-0","seq":5}`, event("6-0", 6))
	stored("4-0")
	take("6-0")
	// No event comes: the pong that answers a ping of the quiet
	// connection stores what was taken since.
	send(`{"type":"pong"}`)
	stored("5-0")
}

// TestRunWaitsForItsGoroutines: when Run returns, nothing of the client
// still runs: a token refresh under way has returned.
func TestRunWaitsForItsGoroutines(t *testing.T) {
	g := newFakeGateway(t)
	var calls, running atomic.Int32
	entered := make(chan struct{})
	tokens := func(ctx context.Context) (string, error) {
		if calls.Add(1) == 1 {
			return unsignedToken(time.Now().Add(2 * time.Second)), nil
		}
		running.Add(1)
		defer running.Add(-1)
		close(entered)
		<-ctx.Done()
		<-time.After(200 * time.Millisecond) // a token service slow to notice
		return "", ctx.Err()
	}
	c := New(g.url, Options{TokenFunc: tokens})
	c.Subscribe("t", SubscribeOptions{OnEvent: func(Event) {}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	g.accept(t, 5*time.Second)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no refresh")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := running.Load(); n != 0 {
		t.Fatalf("Run returned while %d token refresh still ran", n)
	}
}

// TestClientRetriesAnUnavailableSubscribe: a subscribe the gateway refused
// as unavailable (Redis did not answer in time) is sent again on the same
// connection, with the same cursor, and the subscription then takes.
func TestClientRetriesAnUnavailableSubscribe(t *testing.T) {
	g := newFakeGateway(t)
	c := New(g.url, Options{})
	subscribed := make(chan Subscribed, 1)
	c.Subscribe("t", SubscribeOptions{Since: "5-0", OnEvent: func(Event) {},
		OnSubscribed: func(s Subscribed) { subscribed <- s }})
	runClient(t, c)
	conn := g.accept(t, 5*time.Second)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	first, err := wsutil.ReadClientText(conn)
	if err != nil {
		t.Fatalf("reading the subscribe message: %v", err)
	}
	refused := `{"type":"error","code":"unavailable","topic":"t","message":"the bus is unavailable; retry"}`
	if err := wsutil.WriteServerText(conn, []byte(refused)); err != nil {
		t.Fatal(err)
	}
	again, err := wsutil.ReadClientText(conn)
	if err != nil {
		t.Fatalf("no second subscribe on the connection: %v", err)
	}
	if string(again) != string(first) {
		t.Fatalf("sent again %s, want the first subscribe %s", again, first)
	}
	ok := `{"type":"subscribed","topic":"t","recovered":true,"epoch":"e","head":"5-0","seq":5}`
	if err := wsutil.WriteServerText(conn, []byte(ok)); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-subscribed:
		if s.Head != "5-0" {
			t.Fatalf("subscribed %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the retried subscription did not take")
	}
}
