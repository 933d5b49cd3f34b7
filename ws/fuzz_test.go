package ws

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzConn is a net.Conn whose input is fixed and whose output is dropped.
type fuzzConn struct {
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return fuzzAddr }
func (c *fuzzConn) RemoteAddr() net.Addr             { return fuzzAddr }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

var fuzzAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}

// checkHandler fails the fuzz run on a message that broke the limits.
type checkHandler struct {
	tb  testing.TB
	max int
}

func (h *checkHandler) Accept(*Request) error { return nil }
func (h *checkHandler) Open(*Conn, *Request)  {}
func (h *checkHandler) Closed(*Conn)          {}
func (h *checkHandler) Message(_ *Conn, msg []byte) {
	if len(msg) > h.max {
		h.tb.Fatalf("delivered a %d-byte message over the %d limit", len(msg), h.max)
	}
}

// FuzzReadFrames feeds arbitrary client bytes to the frame reader: it must
// never panic, never deliver a message over the limit or invalid UTF-8
// text, and end every input with an error (EOF or a close code).
func FuzzReadFrames(f *testing.F) {
	f.Add(text("hello"))
	f.Add(append(frame(false, 0, opText, []byte("a"), true), frame(true, 0, opContinuation, []byte("b"), true)...))
	f.Add(frame(true, 0, opPing, []byte("p"), true))
	f.Add(frame(true, 0, opClose, []byte{3, 232}, true))
	f.Add(frame(true, 0, opText, []byte("x"), false))
	f.Add(frame(true, 0, opText, make([]byte, 300), true))
	f.Add([]byte{0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})
	const max = 512
	h := &checkHandler{tb: f, max: max}
	s, err := New(Config{Handler: h, MaxMessage: max})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		h.tb = t
		if err := feed(newConn(s, -1), input); err != nil {
			var ce *closeError
			if !errors.As(err, &ce) && !errors.Is(err, errStopReading) {
				t.Fatalf("unexpected error %v", err)
			}
		}
	})
}

// feed hands input to c's reader as reads of a socket would, split into
// pieces of varied sizes so frames arrive whole, split and several at once.
func feed(c *Conn, input []byte) error {
	buf := make([]byte, readBufferSize)
	sizes := []int{readBufferSize, 1, 5, 2, 13, 700}
	for i := 0; len(input) > 0; i++ {
		dst := c.readInto(buf)
		n := copy(dst, input[:min(len(input), sizes[i%len(sizes)])])
		input = input[n:]
		if err := c.received(buf, n); err != nil {
			return err
		}
	}
	return nil
}

func TestFragmentedTextIsValidated(t *testing.T) {
	var got [][]byte
	h := &recordHandler{msgs: &got}
	s, err := New(Config{Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	input := append(frame(false, 0, opText, []byte("\xce"), true), frame(true, 0, opContinuation, []byte("\xba"), true)...)
	if err := feed(newConn(s, -1), input); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !utf8.Valid(got[0]) || string(got[0]) != "κ" {
		t.Fatalf("messages = %q, want one \"κ\"", got)
	}
}

type recordHandler struct{ msgs *[][]byte }

func (h *recordHandler) Accept(*Request) error { return nil }
func (h *recordHandler) Open(*Conn, *Request)  {}
func (h *recordHandler) Closed(*Conn)          {}
func (h *recordHandler) Message(_ *Conn, msg []byte) {
	*h.msgs = append(*h.msgs, append([]byte(nil), msg...))
}

// FuzzHandshake sends arbitrary bytes as the start of a connection: the
// server answers or cuts it and keeps serving real clients.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
	f.Add([]byte("GET /ws?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("GET /ws\n"))
	f.Add([]byte("\x00\x01\x02"))
	_, addr := startServer(f, &echoHandler{}, Config{HandshakeTimeout: 200 * time.Millisecond})
	f.Fuzz(func(t *testing.T, input []byte) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = conn.Write(input)
		_ = conn.(*net.TCPConn).CloseWrite()
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("server neither answered nor cut the connection within 2s")
			}
		}
	})
}
