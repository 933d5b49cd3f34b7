// Package wstest is a small WebSocket client for tests: it speaks the wsbus
// protocol over gobwas/ws and decodes server messages.
package wstest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsbus/wsbus/bus"
)

// Message is any server message.
type Message = bus.ServerMessage

// Client is one test connection.
type Client struct {
	tb   testing.TB
	Conn net.Conn
}

// Dial connects to url and closes the connection at the end of the test.
func Dial(tb testing.TB, url string) *Client {
	tb.Helper()
	c, err := TryDial(url)
	if err != nil {
		tb.Fatalf("dialing %s: %v", url, err)
	}
	c.tb = tb
	tb.Cleanup(func() { _ = c.Conn.Close() })
	return c
}

// TryDial connects to url without failing the test.
func TryDial(url string) (*Client, error) { return DialHeader(url, nil) }

// DialHeader connects to url sending extra handshake headers. A refused
// handshake is a ws.StatusError with the HTTP status.
func DialHeader(url string, header http.Header) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{}
	if header != nil {
		d.Header = ws.HandshakeHeaderHTTP(header)
	}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	if br != nil {
		// Frames the server sent right behind its handshake answer.
		conn = &bufferedConn{Conn: conn, r: br}
	}
	return &Client{Conn: conn}, nil
}

// bufferedConn reads through the reader that holds bytes read past the
// handshake.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// SetReadBuffer sets the socket's receive buffer, which also stops the
// kernel growing it: a test that stops reading then knows how much the
// client side holds.
func (c *Client) SetReadBuffer(bytes int) error {
	conn := c.Conn
	if bc, ok := conn.(*bufferedConn); ok {
		conn = bc.Conn
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("wstest: %T is not a TCP connection", conn)
	}
	return tc.SetReadBuffer(bytes)
}

// Attach makes c fail tb on errors and closes it when tb ends.
func (c *Client) Attach(tb testing.TB) *Client {
	c.tb = tb
	tb.Cleanup(func() { _ = c.Conn.Close() })
	return c
}

// Send writes v as a JSON text message.
func (c *Client) Send(v any) {
	c.tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.tb.Fatalf("encoding %v: %v", v, err)
	}
	c.SendRaw(b)
}

// SendRaw writes one text message.
func (c *Client) SendRaw(b []byte) {
	c.tb.Helper()
	if err := wsutil.WriteClientText(c.Conn, b); err != nil {
		c.tb.Fatalf("writing: %v", err)
	}
}

// Subscribe sends a subscribe message; since and epoch may be empty.
func (c *Client) Subscribe(topic, since, epoch string) {
	c.tb.Helper()
	m := map[string]string{"type": "subscribe", "topic": topic}
	if since != "" {
		m["since"] = since
	}
	if epoch != "" {
		m["epoch"] = epoch
	}
	c.Send(m)
}

// Next returns the next server message, failing the test after timeout.
func (c *Client) Next(timeout time.Duration) Message {
	c.tb.Helper()
	m, err := c.TryNext(timeout)
	if err != nil {
		c.tb.Fatalf("reading server message: %v", err)
	}
	return m
}

// TryNext returns the next server message or an error (a
// wsutil.ClosedError when the server closed the connection).
func (c *Client) TryNext(timeout time.Duration) (Message, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	b, err := wsutil.ReadServerText(c.Conn)
	if err != nil {
		return Message{}, err
	}
	var m Message
	if err := json.Unmarshal(b, &m); err != nil {
		return Message{}, fmt.Errorf("decoding %q: %w", b, err)
	}
	return m, nil
}

// Expect reads the next message and fails unless it has type typ.
func (c *Client) Expect(typ string, timeout time.Duration) Message {
	c.tb.Helper()
	m := c.Next(timeout)
	if m.Type != typ {
		c.tb.Fatalf("got %+v, want a %q message", m, typ)
	}
	return m
}

// Events reads n event messages and returns them; any other message fails.
func (c *Client) Events(n int, timeout time.Duration) []Message {
	c.tb.Helper()
	out := make([]Message, 0, n)
	for len(out) < n {
		m := c.Next(timeout)
		if m.Type != "event" {
			c.tb.Fatalf("after %d events got %+v, want an event", len(out), m)
		}
		out = append(out, m)
	}
	return out
}

// ExpectQuiet fails if any message arrives within d.
func (c *Client) ExpectQuiet(d time.Duration) {
	c.tb.Helper()
	m, err := c.TryNext(d)
	if err == nil {
		c.tb.Fatalf("got %+v, want nothing", m)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.tb.Fatalf("want a quiet open connection, got %v", err)
	}
}

// CloseCode reads until the server closes and returns its close code.
func (c *Client) CloseCode(timeout time.Duration) ws.StatusCode {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, err := c.TryNext(time.Until(deadline))
		var closed wsutil.ClosedError
		if errors.As(err, &closed) {
			return closed.Code
		}
		if err != nil {
			c.tb.Fatalf("want a close frame, got %v", err)
		}
	}
	c.tb.Fatalf("no close frame within %v", timeout)
	return 0
}
