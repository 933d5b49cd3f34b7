package ws

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"testing"
)

// nopHandler accepts everything and ignores messages.
type nopHandler struct{}

func (nopHandler) Accept(*Request) error { return nil }
func (nopHandler) Open(*Conn, *Request)  {}
func (nopHandler) Message(*Conn, []byte) {}
func (nopHandler) Closed(*Conn)          {}

var event = []byte(`{"type":"event","id":"1718000000000-1","topic":"user:42","data":{"text":"hi"}}`)

func BenchmarkTextFrame(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = TextFrame(event)
	}
}

func BenchmarkAppendFrameReused(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = appendFrame(buf[:0], opText, event)
	}
}

var upgradeRequest = []byte("GET /ws?topic=user:42 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n" +
	"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
	"Origin: https://example.com\r\n\r\n")

// BenchmarkUpgrade measures the WebSocket handshake as served: the request
// line peeked and routed, the rate limiter, the request read through the
// size-limited reader, parsed by gobwas/ws with wsbus's callbacks, 101
// written. The article's figure: 973 ns/op, 0 allocs.
func BenchmarkUpgrade(b *testing.B) {
	s, err := New(Config{Handler: nopHandler{}, Path: testPath, UpgradeRate: 1e12, UpgradeBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	r := bytes.NewReader(nil)
	conn := &fuzzConn{r: r}
	for b.Loop() {
		r.Reset(upgradeRequest)
		st := s.getState(conn)
		if err := s.upgrade(st); err != nil {
			b.Fatal(err)
		}
		s.putState(st)
	}
}

// nopOverflowHandler is a nopHandler for OverflowDrop.
type nopOverflowHandler struct{ nopHandler }

func (nopOverflowHandler) Overflow(*Conn) {}

// BenchmarkFanOut sends one encoded event to n connections, as the
// gateway does for a topic's local subscribers: each Send is a write(2)
// to the connection's socket, here /dev/null shared by all of them. The
// offer variants queue it as the gateway does under each --slow-consumer.
func BenchmarkFanOut(b *testing.B) {
	null, err := syscall.Open(os.DevNull, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer syscall.Close(null)
	variants := []struct {
		name  string
		cfg   Config
		offer bool
	}{
		{"send", Config{Handler: nopHandler{}}, false},
		{"offer-close", Config{Handler: nopHandler{}}, true},
		{"offer-drop", Config{Handler: nopOverflowHandler{}, Overflow: OverflowDrop}, true},
	}
	for _, v := range variants {
		for _, n := range []int{1, 100, 10000} {
			b.Run(fmt.Sprintf("%s/%d", v.name, n), func(b *testing.B) {
				benchFanOut(b, v.cfg, v.offer, null, n)
			})
		}
	}
}

func benchFanOut(b *testing.B, cfg Config, offer bool, fd, n int) {
	cfg.MaxQueue = 1 << 30
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	conns := make([]*Conn, n)
	for i := range conns {
		conns[i] = newConn(s, fd)
	}
	send := (*Conn).Send
	if offer {
		send = (*Conn).Offer
	}
	b.ReportAllocs()
	for b.Loop() {
		frame := TextFrame(event)
		for _, c := range conns {
			if err := send(c, frame); err != nil {
				b.Fatal(err)
			}
		}
	}
	if out := s.Stats().FramesOut; out < uint64(b.N*n) {
		b.Fatalf("%d frames written, want %d", out, b.N*n)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
}
