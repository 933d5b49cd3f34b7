package ws

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/testutil"
)

// countingHandler counts the Handler calls of its connections.
type countingHandler struct {
	echoHandler
	opens, closes atomic.Int32
}

func (h *countingHandler) Open(*Conn, *Request) { h.opens.Add(1) }
func (h *countingHandler) Closed(*Conn)         { h.closes.Add(1) }

// drainAsync drains s within timeout on a goroutine; the channel gives
// Drain's result.
func drainAsync(s *Server, timeout time.Duration) (<-chan error, context.Context) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	done := make(chan error, 1)
	go func() {
		defer cancel()
		done <- s.Drain(ctx, closeByApp, "draining", 0)
	}()
	return done, ctx
}

// awaitDrain waits for Drain's result.
func awaitDrain(tb testing.TB, done <-chan error) {
	tb.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		tb.Fatal("Drain did not return within 5s")
	}
}

// readToEnd reads what the server still sends until it closes the
// connection, and fails the test if it does not within 5 s.
func readToEnd(tb testing.TB, conn net.Conn) []byte {
	tb.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tb.Fatalf("the server did not close the connection within 5s (read %q)", b)
	}
	return b
}

// TestDrainCutsAnUnfinishedUpgrade: a connection registered as a drain
// begins, and not yet in the epoll set when the drain's time runs out, is
// cut without the Handler hearing of it: no Open (after a Closed), no
// Closed for a connection never opened, no epoll registration of its
// closed fd; Drain returns only once that upgrade is over.
func TestDrainCutsAnUnfinishedUpgrade(t *testing.T) {
	registered, release := make(chan struct{}), make(chan struct{})
	testHookRegistered = func() {
		close(registered)
		<-release
	}
	t.Cleanup(func() { testHookRegistered = nil }) // after the server's own cleanup
	h := &countingHandler{}
	s, addr := startServer(t, h, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(upgradeRequest); err != nil {
		t.Fatal(err)
	}
	select {
	case <-registered:
	case <-time.After(5 * time.Second):
		t.Fatal("the upgrade was not registered within 5s")
	}
	done, ctx := drainAsync(s, 50*time.Millisecond)
	<-ctx.Done()
	// The drain's deadline cuts every registered connection: this one too.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := s.Len(); n != 0 {
			return fmt.Errorf("the drain did not cut the registered connection: %d open", n)
		}
		return nil
	})
	close(release)
	awaitDrain(t, done)
	testutil.Eventually(t, 5*time.Second, func() error {
		if s.pending.Load() != 0 {
			return errors.New("the handshake did not end")
		}
		return nil
	})
	readToEnd(t, conn)
	if o, c := h.opens.Load(), h.closes.Load(); o != 0 || c != 0 {
		t.Fatalf("the Handler saw %d Open and %d Closed of a connection cut before it was opened, want none", o, c)
	}
}

// TestUpgradeFinishingAfterDrainIsRefused: a handshake half sent when a
// drain begins and finished during it is refused with 503 rather than
// upgraded only to be closed; one never finished is cut at the drain's
// deadline rather than at its own handshake timeout.
func TestUpgradeFinishingAfterDrainIsRefused(t *testing.T) {
	half := len(upgradeRequest) / 2
	t.Run("finished during the drain", func(t *testing.T) {
		s, h, conn := halfUpgraded(t, Config{}, half)
		done, _ := drainAsync(s, 5*time.Second)
		testutil.Eventually(t, 5*time.Second, func() error {
			if !s.shuttingDown() {
				return errors.New("the drain did not begin")
			}
			return nil
		})
		if _, err := conn.Write(upgradeRequest[half:]); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("a handshake finished during a drain was answered %s, want 503", resp.Status)
		}
		awaitDrain(t, done)
		if o, c := h.opens.Load(), h.closes.Load(); o != 0 || c != 0 {
			t.Fatalf("the Handler saw %d Open and %d Closed, want none", o, c)
		}
	})
	t.Run("never finished", func(t *testing.T) {
		s, h, conn := halfUpgraded(t, Config{HandshakeTimeout: time.Minute}, half)
		done, _ := drainAsync(s, 50*time.Millisecond)
		readToEnd(t, conn)
		awaitDrain(t, done)
		if s.pending.Load() != 0 {
			t.Fatal("Drain returned while a handshake was still running")
		}
		if o := h.opens.Load(); o != 0 {
			t.Fatalf("the Handler saw %d Open, want none", o)
		}
	})
}

// TestDrainCutsHTTPRequests: an HTTP request still being served when a
// drain's time runs out is cut, its connection closed, and Drain returns.
func TestDrainCutsHTTPRequests(t *testing.T) {
	entered := make(chan struct{})
	handlerDone := make(chan struct{})
	cfg := Config{HTTP: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		close(entered)
		<-r.Context().Done() // a long poll: ends only when its connection does
	})}
	s, addr := startServer(t, &countingHandler{}, cfg)
	client := &http.Client{Timeout: 10 * time.Second}
	reqErr := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		reqErr <- err
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the HTTP request did not reach its handler within 5s")
	}
	done, _ := drainAsync(s, 100*time.Millisecond)
	select {
	case err := <-reqErr:
		if err == nil {
			t.Fatal("the request in flight got a whole answer, want its connection cut")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request in flight was still open 5s after the drain's deadline")
	}
	awaitDrain(t, done)
	select {
	case <-handlerDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's request context was not ended")
	}
}

// halfUpgraded starts a server with cfg and a client that has sent the
// first n bytes of its upgrade request, and waits until the server's
// handshake of it runs. The connection is closed when the test ends.
func halfUpgraded(t *testing.T, cfg Config, n int) (*Server, *countingHandler, net.Conn) {
	t.Helper()
	h := &countingHandler{}
	s, addr := startServer(t, h, cfg)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := conn.Write(upgradeRequest[:n]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if s.pending.Load() != 1 {
			return errors.New("the handshake did not start")
		}
		return nil
	})
	return s, h, conn
}
