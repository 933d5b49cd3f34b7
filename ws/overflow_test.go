package ws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbus/wsbus/internal/testutil"
)

// overflowHandler records the connections whose queue overflowed.
type overflowHandler struct {
	echoHandler
	opened    chan *Conn
	overflows chan *Conn
}

func newOverflowHandler() *overflowHandler {
	return &overflowHandler{opened: make(chan *Conn, 1), overflows: make(chan *Conn, 16)}
}

func (h *overflowHandler) Open(c *Conn, _ *Request) { h.opened <- c }
func (h *overflowHandler) Overflow(c *Conn)         { h.overflows <- c }

// numbered returns a text frame of size bytes whose payload starts with n.
func numbered(n uint64, size int) Frame {
	p := make([]byte, size)
	binary.BigEndian.PutUint64(p, n)
	return TextFrame(p)
}

func frameNumber(payload []byte) uint64 { return binary.BigEndian.Uint64(payload) }

// stalledConn opens a connection whose client reads nothing yet; the
// server's socket has a small send buffer so its queue fills soon.
func stalledConn(t *testing.T, h *overflowHandler, cfg Config) (*Server, *Conn, net.Conn, *bufio.Reader) {
	t.Helper()
	cfg.Overflow = OverflowDrop
	s, addr := startServer(t, h, cfg)
	conn, br := dialRaw(t, addr)
	return s, opened(t, h), conn, br
}

// opened returns the server side of the connection just dialed, with a
// small send buffer: a client that reads little fills its queue soon and
// sees the writer's progress often.
func opened(t *testing.T, h *overflowHandler) *Conn {
	t.Helper()
	select {
	case c := <-h.opened:
		if err := syscall.SetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10); err != nil {
			t.Fatal(err)
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection opened")
	}
	return nil
}

// offerUntilOverflow offers numbered frames from first on until one is
// refused, and returns the numbers accepted.
func offerUntilOverflow(t *testing.T, c *Conn, first uint64, size int) []uint64 {
	t.Helper()
	var accepted []uint64
	for n := first; ; n++ {
		err := c.Offer(numbered(n, size))
		if errors.Is(err, ErrOverflow) {
			return accepted
		}
		if err != nil {
			t.Fatalf("Offer: %v", err)
		}
		accepted = append(accepted, n)
		if len(accepted) > 100000 {
			t.Fatal("the queue never overflowed")
		}
	}
}

func expectOverflow(t *testing.T, h *overflowHandler, c *Conn) {
	t.Helper()
	select {
	case got := <-h.overflows:
		if got != c {
			t.Fatal("Overflow called for another connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Overflow was not called")
	}
}

// readNumbers reads text frames until want frames arrived.
func readNumbers(t *testing.T, conn net.Conn, br *bufio.Reader, want int) []uint64 {
	t.Helper()
	var got []uint64
	for len(got) < want {
		f := readServerFrame(t, conn, br)
		if f.Header.OpCode != ws.OpText {
			t.Fatalf("frame %d: opcode %v, want text", len(got), f.Header.OpCode)
		}
		got = append(got, frameNumber(f.Payload))
	}
	return got
}

// TestOverflowDropsOfferedFrames: under OverflowDrop a stalled client's
// queue overflows without a close; what it reads afterwards is a prefix
// of the offered frames, the rest is handed back by Recover in order, and
// the two together are every accepted frame once.
func TestOverflowDropsOfferedFrames(t *testing.T) {
	h := newOverflowHandler()
	s, c, conn, br := stalledConn(t, h, Config{MaxQueue: 256 << 10})
	accepted := offerUntilOverflow(t, c, 0, 16<<10)
	expectOverflow(t, h, c)
	dropped := recovered(t, c)
	if len(dropped) == 0 {
		t.Fatal("Recover handed nothing back after an overflow")
	}
	written := len(accepted) - len(dropped)
	got := readNumbers(t, conn, br, written)
	for _, f := range dropped {
		got = append(got, frameNumber(f.Payload()))
	}
	if !slices.Equal(got, accepted) {
		t.Fatalf("written then dropped = %d frames, want the %d accepted in order", len(got), len(accepted))
	}
	if st := s.Stats(); st.SlowConsumers != 0 || st.Overflows != 1 {
		t.Fatalf("slow consumers %d, overflows %d; want 0 and 1", st.SlowConsumers, st.Overflows)
	}
	if c.Recover(func([]Frame) { t.Fatal("Recover called its function without an overflow") }) {
		t.Fatal("Recover reported a second overflow")
	}
}

// recovered returns what Recover hands back.
func recovered(t *testing.T, c *Conn) []Frame {
	t.Helper()
	var dropped []Frame
	if !c.Recover(func(d []Frame) { dropped = d }) {
		t.Fatal("Recover found no overflow")
	}
	return dropped
}

// TestOfferRefusesUntilRecovered: after an overflow every Offer is
// refused, and none is dropped again, until the Handler's Recover function
// has returned; then offers are queued again.
func TestOfferRefusesUntilRecovered(t *testing.T) {
	h := newOverflowHandler()
	_, c, conn, br := stalledConn(t, h, Config{MaxQueue: 256 << 10})
	accepted := offerUntilOverflow(t, c, 0, 16<<10)
	expectOverflow(t, h, c)
	refused := func(when string) {
		t.Helper()
		if err := c.Offer(numbered(1<<40, 16)); !errors.Is(err, ErrOverflow) {
			t.Fatalf("Offer %s: %v, want ErrOverflow", when, err)
		}
	}
	refused("before Recover")
	var dropped []Frame
	c.Recover(func(d []Frame) {
		dropped = d
		refused("while Recover's function runs")
	})
	_ = readNumbers(t, conn, br, len(accepted)-len(dropped))
	if err := c.Offer(numbered(7, 16)); err != nil {
		t.Fatalf("Offer after Recover: %v", err)
	}
	if got := readNumbers(t, conn, br, 1); got[0] != 7 {
		t.Fatalf("read frame %d, want 7", got[0])
	}
	select {
	case <-h.overflows:
		t.Fatal("Overflow called again for refused frames")
	default:
	}
}

// TestSendKeepsItsFrames: frames queued with Send and SendWait are never
// dropped; a Send that would pass MaxQueue drops the offered frames
// instead of closing the connection.
func TestSendKeepsItsFrames(t *testing.T) {
	h := newOverflowHandler()
	s, c, conn, br := stalledConn(t, h, Config{MaxQueue: 256 << 10})
	var accepted []uint64
	for n := uint64(0); len(accepted) < 1000; n++ {
		// Every fourth frame is a reply that must arrive.
		if n%4 == 0 {
			if err := c.Send(numbered(n, 8<<10)); err != nil {
				t.Fatalf("Send %d: %v", n, err)
			}
			accepted = append(accepted, n)
			continue
		}
		if err := c.Offer(numbered(n, 8<<10)); err == nil {
			accepted = append(accepted, n)
		} else if !errors.Is(err, ErrOverflow) {
			t.Fatalf("Offer %d: %v", n, err)
		}
		if s.Stats().Overflows > 0 {
			break
		}
	}
	expectOverflow(t, h, c)
	dropped := make(map[uint64]bool)
	for _, f := range recovered(t, c) {
		n := frameNumber(f.Payload())
		if n%4 == 0 {
			t.Fatalf("frame %d, queued with Send, was dropped", n)
		}
		dropped[n] = true
	}
	var want []uint64
	for _, n := range accepted {
		if !dropped[n] {
			want = append(want, n)
		}
	}
	if got := readNumbers(t, conn, br, len(want)); !slices.Equal(got, want) {
		t.Fatalf("read %v, want %v", got, want)
	}
	if st := s.Stats(); st.SlowConsumers != 0 {
		t.Fatal("the connection was closed as a slow consumer")
	}
}

// TestOverflowDropNeedsHandler: OverflowDrop without an OverflowHandler
// is refused by New.
func TestOverflowDropNeedsHandler(t *testing.T) {
	if _, err := New(Config{Handler: &echoHandler{}, Overflow: OverflowDrop}); err == nil {
		t.Fatal("New accepted OverflowDrop with a Handler that cannot take frames back")
	}
}

// TestUnknownOverflowIsRefused: an Overflow that is neither policy is
// refused by New rather than taken for OverflowClose.
func TestUnknownOverflowIsRefused(t *testing.T) {
	if _, err := New(Config{Handler: newOverflowHandler(), Overflow: OverflowDrop + 1}); err == nil {
		t.Fatal("New accepted an unknown Overflow")
	}
}

// TestOfferUnderOverflowCloseIsSend: with the default policy an Offer past
// MaxQueue closes the connection with 4001.
func TestOfferUnderOverflowCloseIsSend(t *testing.T) {
	h := newOverflowHandler()
	s, addr := startServer(t, h, Config{MaxQueue: 256 << 10})
	conn, br := dialRaw(t, addr)
	c := opened(t, h)
	var err error
	for n := uint64(0); err == nil; n++ {
		err = c.Offer(numbered(n, 16<<10))
	}
	if !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("Offer: %v, want ErrSlowConsumer", err)
	}
	for {
		if f := readServerFrame(t, conn, br); f.Header.OpCode == ws.OpClose {
			if code := closeCode(f.Payload); code != CloseSlowConsumer {
				t.Fatalf("closed with %d, want 4001", code)
			}
			break
		}
	}
	if s.Stats().SlowConsumers != 1 || s.Stats().Overflows != 0 {
		t.Fatalf("stats %+v, want one slow consumer and no overflow", s.Stats())
	}
}

// TestSteadySlowReaderIsNotCut: the write timeout counts from the last
// progress (a partial write resets it), so a client that reads slowly but
// steadily for longer than WriteTimeout is not cut: a lagging client is
// caught up at the pace it reads.
func TestSteadySlowReaderIsNotCut(t *testing.T) {
	h := newOverflowHandler()
	s, addr := startServer(t, h, Config{WriteTimeout: 300 * time.Millisecond, MaxQueue: 64 << 20})
	conn, br := dialRaw(t, addr)
	c := opened(t, h)
	const frames = 200
	// Queued while the client reads: a queue filled first, before any
	// read, could itself outlast the write timeout on a loaded machine.
	sent := make(chan error, 1)
	go func() {
		for n := range uint64(frames) {
			if err := c.Send(numbered(n, 64<<10)); err != nil { // 12.5 MiB
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	start := time.Now()
	got := 0
	buf := make([]byte, 16<<10)
	for time.Since(start) < time.Second { // three times the write timeout, reading slowly
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := br.Read(buf)
		if err != nil {
			t.Fatalf("reading slowly: cut after %v: %v", time.Since(start), err)
		}
		got += n
		time.Sleep(20 * time.Millisecond) // the slow reader under test, not a wait for the server
	}
	if err := <-sent; err != nil {
		t.Fatalf("Send: %v", err)
	}
	if s.Len() != 1 {
		t.Fatal("the steady reader was cut")
	}
	if got >= frames*64<<10 {
		t.Fatalf("read all %d bytes within a second: the reader was not slow", got)
	}
}

// TestQueuedCountsWhatWaits: frames sent to a client that reads nothing
// wait in its queue, counted by Queued and Stats.FramesQueued; once the
// client has read them, nothing waits.
func TestQueuedCountsWhatWaits(t *testing.T) {
	h := newOverflowHandler()
	s, c, conn, br := stalledConn(t, h, Config{})
	if b, n := s.Queued(); b != 0 || n != 0 {
		t.Fatalf("Queued() = %d bytes on %d connections before anything was sent", b, n)
	}
	sent := 0
	for s.Stats().FramesQueued == 0 {
		if err := c.Send(numbered(uint64(sent), 4096)); err != nil {
			t.Fatalf("Send: %v", err)
		}
		sent++
	}
	if b, n := s.Queued(); b <= 0 || n != 1 {
		t.Fatalf("Queued() = %d bytes on %d connections with the socket full, want some on 1", b, n)
	}
	readNumbers(t, conn, br, sent)
	testutil.Eventually(t, 5*time.Second, func() error {
		if b, n := s.Queued(); b != 0 || n != 0 {
			return fmt.Errorf("the queue did not empty once the client read everything: %d bytes on %d connections", b, n)
		}
		return nil
	})
}
