package ws

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/wsbus/wsbus/internal/testutil"
)

// echoHandler sends every message back and records what it saw.
type echoHandler struct {
	mu       sync.Mutex
	messages [][]byte
	closed   int
	onOpen   func(c *Conn)
}

func (h *echoHandler) Accept(r *Request) error {
	if bytes.Contains(r.URI, []byte("refuse")) {
		return ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("refused"))
	}
	return nil
}

// slowAccept takes wait to accept each upgrade, telling entered (if set)
// when the first has begun.
type slowAccept struct {
	*echoHandler
	wait    time.Duration
	entered chan struct{}
	once    sync.Once
}

func (h *slowAccept) Accept(r *Request) error {
	if h.entered != nil {
		h.once.Do(func() { close(h.entered) })
	}
	time.Sleep(h.wait)
	return h.echoHandler.Accept(r)
}

func (h *echoHandler) Open(c *Conn, _ *Request) {
	if h.onOpen != nil {
		h.onOpen(c)
	}
}

func (h *echoHandler) Message(c *Conn, msg []byte) {
	h.mu.Lock()
	h.messages = append(h.messages, append([]byte(nil), msg...))
	h.mu.Unlock()
	_ = c.Send(TextFrame(msg))
}

func (h *echoHandler) Closed(*Conn) {
	h.mu.Lock()
	h.closed++
	h.mu.Unlock()
}

// testPath is where the tests' servers upgrade: any path but the default.
const testPath = "/ws"

// closeByApp is a close code of the application's own range (4000-4999),
// as one passes to Drain.
const closeByApp = 4000

func startServer(tb testing.TB, h Handler, cfg Config) (*Server, string) {
	tb.Helper()
	cfg.Handler = h
	if cfg.Path == "" {
		cfg.Path = testPath
	}
	if cfg.HTTP == nil {
		cfg.HTTP = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "http %s", r.URL.Path)
		})
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.Shutdown(ctx, CloseGoingAway, "test over")
	})
	return s, ln.Addr().String()
}

// dialRaw upgrades a raw connection; the test writes frames by hand.
func dialRaw(tb testing.TB, addr string) (net.Conn, *bufio.Reader) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+addr+testPath)
	if err != nil {
		tb.Fatalf("dialing: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return conn, br
}

// frame builds a client frame; masked unless mask is false.
func frame(fin bool, rsv, op byte, payload []byte, masked bool) []byte {
	var b bytes.Buffer
	first := op | rsv<<4
	if fin {
		first |= 0x80
	}
	b.WriteByte(first)
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(maskBit | byte(n))
	case n <= 0xFFFF:
		b.WriteByte(maskBit | 126)
		_ = binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(maskBit | 127)
		_ = binary.Write(&b, binary.BigEndian, uint64(n))
	}
	p := append([]byte(nil), payload...)
	if masked {
		mask := [4]byte{1, 2, 3, 4}
		b.Write(mask[:])
		ws.Cipher(p, mask, 0)
	}
	b.Write(p)
	return b.Bytes()
}

func text(s string) []byte { return frame(true, 0, opText, []byte(s), true) }

func closeCode(payload []byte) uint16 {
	if len(payload) < 2 {
		return CloseNormal
	}
	return binary.BigEndian.Uint16(payload)
}

// readServerFrame reads one frame the server sent.
func readServerFrame(tb testing.TB, conn net.Conn, br *bufio.Reader) ws.Frame {
	tb.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(br)
	if err != nil {
		tb.Fatalf("reading server frame: %v", err)
	}
	return f
}

func TestProtocol(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{MaxMessage: 70000})
	bad := []byte{0xff, 0xfe}
	tests := []struct {
		name  string
		input [][]byte
		// want is the text messages echoed back, or wantClose the close code.
		want      []string
		wantClose uint16
	}{
		{"text", [][]byte{text("hello")}, []string{"hello"}, 0},
		{"binary", [][]byte{frame(true, 0, opBinary, []byte("bin"), true)}, []string{"bin"}, 0},
		{"empty text", [][]byte{text("")}, []string{""}, 0},
		{"two frames in one write", [][]byte{append(text("a"), text("b")...)}, []string{"a", "b"}, 0},
		{"fragments", [][]byte{
			frame(false, 0, opText, []byte("he"), true),
			frame(false, 0, opContinuation, []byte("ll"), true),
			frame(true, 0, opContinuation, []byte("o"), true),
		}, []string{"hello"}, 0},
		{"ping between fragments", [][]byte{
			frame(false, 0, opText, []byte("a"), true),
			frame(true, 0, opPing, []byte("p"), true),
			frame(true, 0, opContinuation, []byte("b"), true),
		}, []string{"ab"}, 0},
		{"UTF-8 split across fragments", [][]byte{
			frame(false, 0, opText, []byte("\xce"), true),
			frame(true, 0, opContinuation, []byte("\xba"), true),
		}, []string{"κ"}, 0},
		{"126-byte length", [][]byte{text(strings.Repeat("x", 300))}, []string{strings.Repeat("x", 300)}, 0},
		{"125-byte payload", [][]byte{text(strings.Repeat("x", 125))}, []string{strings.Repeat("x", 125)}, 0},
		{"ping with 125 bytes", [][]byte{frame(true, 0, opPing, make([]byte, 125), true), text("after")}, []string{"after"}, 0},
		{"unsolicited pong", [][]byte{frame(true, 0, opPong, []byte("x"), true), text("still here")}, []string{"still here"}, 0},
		{"empty fragments", [][]byte{
			frame(false, 0, opText, nil, true),
			frame(false, 0, opContinuation, nil, true),
			frame(true, 0, opContinuation, []byte("z"), true),
		}, []string{"z"}, 0},
		{"invalid UTF-8 in a fragment", [][]byte{
			frame(false, 0, opText, []byte("ok"), true),
			frame(true, 0, opContinuation, bad, true),
		}, nil, CloseInvalidPayload},
		{"close with a 123-byte reason", [][]byte{frame(true, 0, opClose, append([]byte{0x03, 0xE8}, strings.Repeat("r", 123)...), true)}, nil, CloseNormal},
		{"RSV1 without permessage-deflate", [][]byte{frame(true, 1<<2, opText, []byte("x"), true)}, nil, CloseProtocolError},
		{"unmasked", [][]byte{frame(true, 0, opText, []byte("x"), false)}, nil, CloseProtocolError},
		{"reserved bits", [][]byte{frame(true, 4, opText, []byte("x"), true)}, nil, CloseProtocolError},
		{"reserved opcode", [][]byte{frame(true, 0, 0x3, []byte("x"), true)}, nil, CloseProtocolError},
		{"reserved control opcode", [][]byte{frame(true, 0, 0xB, nil, true)}, nil, CloseProtocolError},
		{"fragmented ping", [][]byte{frame(false, 0, opPing, nil, true)}, nil, CloseProtocolError},
		{"ping over 125 bytes", [][]byte{frame(true, 0, opPing, make([]byte, 126), true)}, nil, CloseProtocolError},
		{"stray continuation", [][]byte{frame(true, 0, opContinuation, []byte("x"), true)}, nil, CloseProtocolError},
		{"text inside fragments", [][]byte{frame(false, 0, opText, []byte("a"), true), text("b")}, nil, CloseProtocolError},
		{"64-bit length", [][]byte{text(strings.Repeat("y", 65536))}, []string{strings.Repeat("y", 65536)}, 0},
		{"too big", [][]byte{text(strings.Repeat("x", 70001))}, nil, CloseMessageTooBig},
		{"too big in fragments", [][]byte{
			frame(false, 0, opText, make([]byte, 40000), true),
			frame(true, 0, opContinuation, make([]byte, 40000), true),
		}, nil, CloseMessageTooBig},
		{"too big by its header alone", [][]byte{{0x81, 0xFF, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4}}, nil, CloseMessageTooBig},
		{"invalid UTF-8", [][]byte{text(string(bad))}, nil, CloseInvalidPayload},
		{"close with 1-byte payload", [][]byte{frame(true, 0, opClose, []byte{3}, true)}, nil, CloseProtocolError},
		{"close with code 1005", [][]byte{frame(true, 0, opClose, []byte{0x03, 0xED}, true)}, nil, CloseProtocolError},
		{"close with code 999", [][]byte{frame(true, 0, opClose, []byte{0x03, 0xE7}, true)}, nil, CloseProtocolError},
		{"close with invalid UTF-8 reason", [][]byte{frame(true, 0, opClose, append([]byte{0x03, 0xE8}, bad...), true)}, nil, CloseInvalidPayload},
		{"close 1000", [][]byte{frame(true, 0, opClose, []byte{0x03, 0xE8, 'b', 'y', 'e'}, true)}, nil, CloseNormal},
		{"close 4000", [][]byte{frame(true, 0, opClose, []byte{0x0F, 0xA0}, true)}, nil, 4000},
		{"close without payload", [][]byte{frame(true, 0, opClose, nil, true)}, nil, CloseNormal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := dialRaw(t, addr)
			for _, b := range tt.input {
				if _, err := conn.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for {
				f := readServerFrame(t, conn, br)
				switch f.Header.OpCode {
				case ws.OpText:
					got = append(got, string(f.Payload))
				case ws.OpPong:
					if string(f.Payload) != "p" && !bytes.Equal(f.Payload, make([]byte, 125)) {
						t.Fatalf("pong payload %q, want the ping's", f.Payload)
					}
				case ws.OpClose:
					if code := closeCode(f.Payload); code != tt.wantClose || tt.wantClose == 0 {
						t.Fatalf("closed with %d %q, want %d", code, f.Payload, tt.wantClose)
					}
					if _, err := br.ReadByte(); err != io.EOF {
						t.Fatalf("after the close frame: %v, want EOF", err)
					}
					return
				}
				if tt.wantClose == 0 && len(got) == len(tt.want) {
					if strings.Join(got, "|") != strings.Join(tt.want, "|") {
						t.Fatalf("echoed %q, want %q", got, tt.want)
					}
					return
				}
			}
		})
	}
}

func TestHTTPOnTheSamePort(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{})
	for _, path := range []string{"/", "/healthz", "/wsx", "/v1/publish"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "http "+path {
			t.Errorf("GET %s = %q, want the HTTP handler", path, body)
		}
	}
	// /ws without an upgrade is refused by the WebSocket side.
	resp, err := http.Get("http://" + addr + testPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Errorf("GET /ws without upgrade = %d, want a 4xx", resp.StatusCode)
	}
}

func TestAcceptRefuses(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, _, err := ws.Dial(ctx, "ws://"+addr+"/ws?refuse=1")
	var status ws.StatusError
	if !errorAs(err, &status) || int(status) != http.StatusForbidden {
		t.Fatalf("dial = %v, want status 403", err)
	}
}

func errorAs(err error, target *ws.StatusError) bool {
	s, ok := err.(ws.StatusError)
	if ok {
		*target = s
	}
	return ok
}

// TestSlowConsumer fills a connection's queue while the client does not
// read: it is closed with 4001 and the server's memory is not held.
func TestSlowConsumer(t *testing.T) {
	h := &echoHandler{}
	payload := make([]byte, 64<<10)
	h.onOpen = func(c *Conn) {
		go func() {
			f := TextFrame(payload)
			for c.Send(f) == nil {
			}
		}()
	}
	s, addr := startServer(t, h, Config{MaxQueue: 256 << 10})
	conn, br := dialRaw(t, addr)
	// Read nothing until the queue has overflowed.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := s.Stats().SlowConsumers; n != 1 {
			return fmt.Errorf("slow consumers = %d, want 1", n)
		}
		return nil
	})
	for {
		f := readServerFrame(t, conn, br)
		if f.Header.OpCode == ws.OpClose {
			if code := closeCode(f.Payload); code != CloseSlowConsumer {
				t.Fatalf("closed with %d, want 4001", code)
			}
			break
		}
	}
	if s.Stats().SlowConsumers != 1 {
		t.Fatalf("slow consumers = %d, want 1", s.Stats().SlowConsumers)
	}
}

func TestShutdownClosesWithCode(t *testing.T) {
	h := &echoHandler{}
	s, addr := startServer(t, h, Config{})
	conns := make([]net.Conn, 3)
	for i := range conns {
		conns[i], _ = dialRaw(t, addr)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := s.Len(); n < len(conns) {
			return fmt.Errorf("%d of %d connections registered", n, len(conns))
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx, closeByApp, "draining")
	}()
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := wsutil.ReadServerData(c)
		var closed wsutil.ClosedError
		if !errorsAsClosed(err, &closed) || closed.Code != closeByApp {
			t.Fatalf("read = %v, want close %d", err, closeByApp)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed != len(conns) {
		t.Fatalf("Closed called %d times, want %d", h.closed, len(conns))
	}
}

func errorsAsClosed(err error, target *wsutil.ClosedError) bool {
	c, ok := err.(wsutil.ClosedError)
	if ok {
		*target = c
	}
	return ok
}

// TestKeepalive pings a silent client and closes an idle one.
func TestKeepalive(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{PingInterval: 200 * time.Millisecond, IdleTimeout: 700 * time.Millisecond})
	conn, br := dialRaw(t, addr)
	if f := readServerFrame(t, conn, br); f.Header.OpCode != ws.OpPing {
		t.Fatalf("got opcode %v, want a ping", f.Header.OpCode)
	}
	for {
		f := readServerFrame(t, conn, br)
		if f.Header.OpCode == ws.OpClose {
			if code := closeCode(f.Payload); code != CloseGoingAway {
				t.Fatalf("closed with %d, want 1001", code)
			}
			return
		}
	}
}

func TestHandshakeLimits(t *testing.T) {
	t.Run("headers too large", func(t *testing.T) {
		_, addr := startServer(t, &echoHandler{}, Config{MaxHandshakeBytes: 1024})
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 4000))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("response %v, %v: want 431", resp, err)
		}
	})
	t.Run("large headers within the limit", func(t *testing.T) {
		// Past the buffer a handshake starts with, short of the limit.
		_, addr := startServer(t, &echoHandler{}, Config{MaxHandshakeBytes: 16 << 10})
		for range 3 { // the second and third reuse the first's state
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Cookie": {strings.Repeat("c", 12<<10)}})}
			conn, _, _, err := d.Dial(ctx, "ws://"+addr+testPath)
			cancel()
			if err != nil {
				t.Fatalf("a 12 KB handshake under a 16 KB limit: %v", err)
			}
			_ = wsutil.WriteClientText(conn, []byte("hi"))
			if msg, err := wsutil.ReadServerText(conn); err != nil || string(msg) != "hi" {
				t.Fatalf("echo = %q, %v", msg, err)
			}
			conn.Close()
		}
	})
	t.Run("connection limit", func(t *testing.T) {
		s, addr := startServer(t, &echoHandler{}, Config{MaxConnections: 2})
		dialRaw(t, addr)
		dialRaw(t, addr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _, _, err := ws.Dial(ctx, "ws://"+addr+testPath)
		var status ws.StatusError
		if !errorAs(err, &status) || int(status) != http.StatusServiceUnavailable {
			t.Fatalf("third dial = %v, want 503", err)
		}
		if s.Stats().Refused != 1 {
			t.Fatalf("refused = %d, want 1", s.Stats().Refused)
		}
	})
	t.Run("connection limit under concurrent handshakes", func(t *testing.T) {
		// Accept is slow, so every handshake is past the limit check
		// before any is registered: the limit must hold all the same, and
		// a refused Accept must give its slot back.
		const limit, dials = 3, 12
		h := &slowAccept{echoHandler: &echoHandler{}, wait: 50 * time.Millisecond}
		s, addr := startServer(t, h, Config{MaxConnections: limit})
		refusal := func(path string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, _, _, err := ws.Dial(ctx, "ws://"+addr+path); err == nil {
				t.Errorf("dial of %s upgraded, want it refused", path)
			}
		}
		refusal(testPath + "?refuse")
		var wg sync.WaitGroup
		var upgraded, full atomic.Int32
		for range dials {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				conn, _, _, err := ws.Dial(ctx, "ws://"+addr+testPath)
				var status ws.StatusError
				switch {
				case err == nil:
					upgraded.Add(1)
					t.Cleanup(func() { _ = conn.Close() })
				case errorAs(err, &status) && int(status) == http.StatusServiceUnavailable:
					full.Add(1)
				default:
					t.Errorf("dial: %v", err)
				}
			})
		}
		wg.Wait()
		if upgraded.Load() != limit || full.Load() != dials-limit {
			t.Fatalf("%d upgraded and %d refused with 503, want %d and %d", upgraded.Load(), full.Load(), limit, dials-limit)
		}
		// A client has its 101 before the server registers its connection.
		testutil.Eventually(t, testutil.Wait, func() error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.live != limit || s.reserved != 0 {
				return fmt.Errorf("%d live and %d reserved, want %d and 0", s.live, s.reserved, limit)
			}
			return nil
		})
		if got := s.Stats().Refused; got != dials-limit {
			t.Fatalf("refused = %d, want %d", got, dials-limit)
		}
	})
	t.Run("an upgrade refused while shutting down gives its slot back", func(t *testing.T) {
		accepting := make(chan struct{})
		h := &slowAccept{echoHandler: &echoHandler{}, wait: 300 * time.Millisecond, entered: accepting}
		s, addr := startServer(t, h, Config{MaxConnections: 1})
		dialed := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _, _, err := ws.Dial(ctx, "ws://"+addr+testPath)
			dialed <- err
		}()
		<-accepting // the slot is taken; Accept has 300 ms to go
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx, CloseGoingAway, "test over"); err != nil {
			t.Fatal(err)
		}
		if err := <-dialed; err == nil {
			t.Fatal("an upgrade answered during shutdown was accepted")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.live != 0 || s.reserved != 0 {
			t.Fatalf("%d live and %d reserved after the refusal, want 0 and 0", s.live, s.reserved)
		}
	})
	t.Run("handshake timeout", func(t *testing.T) {
		_, addr := startServer(t, &echoHandler{}, Config{HandshakeTimeout: 200 * time.Millisecond})
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: x\r\n") // and nothing more
		start := time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(conn)
		if err != nil || time.Since(start) > 2*time.Second {
			t.Fatalf("a half-sent handshake was cut after %v (%v), want about 200ms", time.Since(start), err)
		}
	})
}

// TestSendWaitAppliesBackPressure replays 4 MiB through a 256 KiB queue:
// SendWait waits for room instead of closing the connection.
func TestSendWaitAppliesBackPressure(t *testing.T) {
	h := &echoHandler{}
	payload := make([]byte, 64<<10)
	const frames = 64
	errs := make(chan error, 1)
	h.onOpen = func(c *Conn) {
		go func() {
			for range frames {
				if err := c.SendWait(TextFrame(payload)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	s, addr := startServer(t, h, Config{MaxQueue: 256 << 10})
	conn, br := dialRaw(t, addr)
	for i := range frames {
		time.Sleep(time.Millisecond) // the slow reader under test, not a wait for the server
		if f := readServerFrame(t, conn, br); f.Header.OpCode != ws.OpText || len(f.Payload) != len(payload) {
			t.Fatalf("frame %d: %v, %d bytes", i, f.Header.OpCode, len(f.Payload))
		}
	}
	if err := <-errs; err != nil {
		t.Fatalf("SendWait: %v", err)
	}
	if s.Stats().SlowConsumers != 0 {
		t.Fatal("a waiting sender was closed as a slow consumer")
	}
}

// TestDeflateOfferIsDeclined: permessage-deflate is never negotiated, so an
// inflated-size bomb cannot be sent; compressed frames (RSV1) are refused.
func TestDeflateOfferIsDeclined(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("server accepted extensions %q, want none", ext)
	}
}

// lockingHandler's Closed takes a lock its sender may hold, as the
// gateway's topics do.
type lockingHandler struct {
	echoHandler
	mu    sync.Mutex
	conns chan *Conn
}

func (h *lockingHandler) Open(c *Conn, _ *Request) { h.conns <- c }
func (h *lockingHandler) Closed(*Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
}

// TestSendNeverCallsClosedInline sends, under the lock that Closed takes,
// to connections whose peers reset: Send must return instead of closing
// the connection (and calling Closed) on the caller's goroutine.
func TestSendNeverCallsClosedInline(t *testing.T) {
	h := &lockingHandler{conns: make(chan *Conn, 20)}
	_, addr := startServer(t, h, Config{})
	for range 20 {
		conn, _ := dialRaw(t, addr)
		c := <-h.conns
		_ = conn.(*net.TCPConn).SetLinger(0)
		_ = conn.Close() // a reset
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.mu.Lock()
			defer h.mu.Unlock()
			frame := TextFrame(make([]byte, 1024))
			for range 50 {
				if c.Send(frame) != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Send deadlocked: it called Closed while the caller held the handler's lock")
		}
	}
}

// TestUnfinishedFrameIsCut: a client that sends part of a frame and stops
// is cut once Config.ReadTimeout has passed, and not before; a frame that
// arrives in pieces within the time is read whole.
func TestUnfinishedFrameIsCut(t *testing.T) {
	h := &echoHandler{}
	_, addr := startServer(t, h, Config{ReadTimeout: 500 * time.Millisecond})
	conn, br := dialRaw(t, addr)
	whole := text("split across three writes")
	for _, piece := range [][]byte{whole[:1], whole[1:4], whole[4:]} {
		_, _ = conn.Write(piece)
		time.Sleep(50 * time.Millisecond) // the pieces arrive apart: the pacing under test
	}
	if f := readServerFrame(t, conn, br); string(f.Payload) != "split across three writes" {
		t.Fatalf("echo %q, want the split message", f.Payload)
	}
	start := time.Now()
	_, _ = conn.Write(text("never finished")[:5])
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := br.ReadByte()
	took := time.Since(start)
	if err == nil {
		t.Fatal("server sent something instead of cutting the connection")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server kept a connection with an unfinished frame past ReadTimeout")
	}
	if took < 500*time.Millisecond {
		t.Fatalf("cut after %v, before ReadTimeout", took)
	}
}

// TestStalledWriteIsCut: a client that takes no data while the server has
// some to send is cut once Config.WriteTimeout has passed.
func TestStalledWriteIsCut(t *testing.T) {
	h := &echoHandler{}
	opened := make(chan *Conn, 1)
	h.onOpen = func(c *Conn) { opened <- c }
	s, addr := startServer(t, h, Config{WriteTimeout: 500 * time.Millisecond, MaxQueue: 64 << 20})
	conn, _ := dialRaw(t, addr)
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	c := <-opened
	frame := TextFrame(make([]byte, 64<<10))
	for range 200 { // 12.5 MiB, more than both socket buffers hold
		if err := c.Send(frame); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if s.Len() > 0 {
			return errors.New("a connection whose client reads nothing is still open")
		}
		return nil
	})
	if s.Stats().SlowConsumers != 0 {
		t.Fatal("cut as a slow consumer, want the write timeout")
	}
}

// TestPingsAreSpread: connections opened together are pinged after
// different silences, from 3/4 of PingInterval to all of it.
func TestPingsAreSpread(t *testing.T) {
	null, err := syscall.Open(os.DevNull, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(null)
	s, err := New(Config{Handler: nopHandler{}, PingInterval: 100 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	early, late := newConn(s, null), newConn(s, null)
	early.spread, late.spread = 0, 255
	start := time.Now()
	early.lastSeen.Store(start.UnixNano())
	late.lastSeen.Store(start.UnixNano())
	pings := func() uint64 { return s.Stats().FramesOut }
	early.keepalive(start.Add(74 * time.Second))
	late.keepalive(start.Add(74 * time.Second))
	if n := pings(); n != 0 {
		t.Fatalf("%d pings after 74 s of silence, want none before 3/4 of the interval", n)
	}
	early.keepalive(start.Add(76 * time.Second))
	late.keepalive(start.Add(76 * time.Second))
	if n := pings(); n != 1 {
		t.Fatalf("%d pings after 76 s, want the early connection's only", n)
	}
	early.keepalive(start.Add(77 * time.Second))
	if n := pings(); n != 1 {
		t.Fatalf("%d pings after 77 s, want no second ping a second after the first", n)
	}
	late.keepalive(start.Add(101 * time.Second))
	if n := pings(); n != 2 {
		t.Fatalf("%d pings after 101 s, want both", n)
	}
}

// TestUpgradedSocketFlags: the fd an upgraded connection keeps is
// non-blocking (a write to a full socket must not stall the fan-out) and
// close-on-exec (a child process must not inherit clients' sockets).
func TestUpgradedSocketFlags(t *testing.T) {
	h := &echoHandler{}
	opened := make(chan *Conn, 1)
	h.onOpen = func(c *Conn) { opened <- c }
	_, addr := startServer(t, h, Config{})
	dialRaw(t, addr)
	c := <-opened
	c.mu.Lock()
	defer c.mu.Unlock()
	fdFlags, _, e1 := syscall.Syscall(syscall.SYS_FCNTL, uintptr(c.fd), syscall.F_GETFD, 0)
	flFlags, _, e2 := syscall.Syscall(syscall.SYS_FCNTL, uintptr(c.fd), syscall.F_GETFL, 0)
	if e1 != 0 || e2 != 0 {
		t.Fatalf("fcntl: %v %v", e1, e2)
	}
	if fdFlags&syscall.FD_CLOEXEC == 0 {
		t.Error("upgraded socket is not close-on-exec")
	}
	if flFlags&syscall.O_NONBLOCK == 0 {
		t.Error("upgraded socket is blocking")
	}
}

// TestAfterUpgradeBurst: the callback runs once a burst of upgrades is
// over (a settle check finds none since the last), not while upgrades
// still come, and not for fewer than settleBurst since its last call; the
// burst's idle handshake states are dropped before it.
func TestAfterUpgradeBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		var idleStates int
		s := &Server{done: make(chan struct{})}
		cfg := Config{Handler: nopHandler{}, AfterUpgradeBurst: func() {
			calls.Add(1)
			idleStates = len(s.states)
		}}
		s.cfg = cfg.withDefaults()
		s.putState(s.getState(&net.TCPConn{})) // a handshake state kept for the next upgrade
		go s.keepalive()
		defer close(s.done)
		// Settle checks fall at 1 s, 6 s, 11 s, …; each step ends half a
		// second after one.
		steps := []struct {
			upgrades uint64
			until    time.Duration
			want     int32
		}{
			{settleBurst, 5500 * time.Millisecond, 0},      // the 1 s check saw them arrive
			{settleBurst / 2, 10500 * time.Millisecond, 0}, // more came before the 6 s check
			{0, 11500 * time.Millisecond, 1},               // none before the 11 s check
			{settleBurst - 1, 21500 * time.Millisecond, 1}, // a burst too small to settle after
			{1, 31500 * time.Millisecond, 2},               // now it is big enough
		}
		start := time.Now()
		for i, st := range steps {
			s.stats.upgraded.Add(st.upgrades)
			time.Sleep(time.Until(start.Add(st.until)))
			synctest.Wait()
			if got := calls.Load(); got != st.want {
				t.Fatalf("step %d, at %v: %d calls, want %d", i, st.until, got, st.want)
			}
			if st.want > 0 && idleStates != 0 {
				t.Fatalf("step %d: %d idle handshake states kept after the burst, want none", i, idleStates)
			}
			if st.want == 0 {
				s.statesMu.Lock()
				kept := len(s.states)
				s.statesMu.Unlock()
				if kept != 1 {
					t.Fatalf("step %d, while the burst lasts: %d idle handshake states, want the 1 kept", i, kept)
				}
			}
		}
	})
}
