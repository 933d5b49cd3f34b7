//go:build linux

package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestFloorSlowClient has the floor write to a few real sockets, one of
// whose clients reads nothing: the others get every frame, in order, while
// it is full; once it reads, EPOLLOUT gets it the rest of its queue.
func TestFloorSlowClient(t *testing.T) {
	const (
		clients = 4
		frames  = 2000 // 2 MB each: far more than a socket's buffers
		size    = 1000
	)
	ctx, f, ln := startFloor(t)
	var conns []net.Conn
	for i := range clients {
		c, fd := floorClient(t, ln)
		if i == 0 { // the slow one: a small send buffer fills before the floor's queue
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.add("live", fd); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	frame := func(i int) []byte { return fmt.Appendf(nil, "%0*d", size, i) }
	for i := range frames {
		f.broadcast(ctx, "live", frame(i))
		f.broadcast(ctx, "other", frame(-1)) // nobody's channel
	}
	readAll := func(c net.Conn) error {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, size)
		for i := range frames {
			if _, err := io.ReadFull(c, buf); err != nil {
				return fmt.Errorf("frame %d: %w", i, err)
			}
			if string(buf) != string(frame(i)) {
				return fmt.Errorf("frame %d is %.20q...", i, buf)
			}
		}
		return nil
	}
	for i, c := range conns[1:] {
		if err := readAll(c); err != nil {
			t.Fatalf("client %d, beside one that reads nothing: %v", i+1, err)
		}
	}
	if queued := floorQueued(f); queued == 0 {
		t.Fatal("the slow client has nothing queued: the test did not fill its socket")
	}
	if err := readAll(conns[0]); err != nil {
		t.Fatalf("the slow client, reading at last: %v", err)
	}
}

// TestFloorClosesLeftClient has a client leave: the floor closes its
// socket on EPOLLRDHUP, with nothing written to it.
func TestFloorClosesLeftClient(t *testing.T) {
	_, f, ln := startFloor(t)
	c, fd := floorClient(t, ln)
	if err := f.add("live", fd); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	for deadline := time.Now().Add(5 * time.Second); floorConns(f) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the floor still holds the socket of a client that left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startFloor starts a floor that stops with the test, and a listener for
// its clients.
func startFloor(t *testing.T) (context.Context, *floor, net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f, err := newFloor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); f.wait() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ctx, f, ln
}

// floorClient connects a client to ln and returns it with the fd of the
// server's side, as serveFloor hands it to the floor.
func floorClient(t *testing.T, ln net.Listener) (net.Conn, int) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := dupFD(srv)
	_ = srv.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c, fd
}

// floorQueued counts the bytes the floor's connections have queued.
func floorQueued(f *floor) int {
	n := 0
	for _, sh := range f.shards {
		sh.mu.Lock()
		for _, c := range sh.byFD {
			for _, b := range c.queue {
				n += len(b)
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// floorConns counts the floor's open connections.
func floorConns(f *floor) int {
	n := 0
	for _, sh := range f.shards {
		sh.mu.Lock()
		n += len(sh.byFD)
		sh.mu.Unlock()
	}
	return n
}
