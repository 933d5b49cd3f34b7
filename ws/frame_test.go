package ws

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/gobwas/ws"
)

// TestTextFrame: both constructors encode a final text frame that a
// client decodes to the payload, with nothing after it, and Payload
// gives the payload back, at each length encoding's edges.
func TestTextFrame(t *testing.T) {
	constructors := []struct {
		name string
		make func([]byte) Frame
	}{
		{"bytes", TextFrame},
		{"string", func(p []byte) Frame { return TextFrameString(string(p)) }},
	}
	for _, c := range constructors {
		for _, n := range []int{0, 125, 126, 65535, 65536, 70000} {
			t.Run(fmt.Sprintf("%s/%d", c.name, n), func(t *testing.T) {
				payload := bytes.Repeat([]byte{'a'}, n)
				frame := c.make(payload)
				r := bytes.NewReader(frame.Bytes())
				f, err := ws.ReadFrame(r)
				if err != nil || !f.Header.Fin || f.Header.OpCode != ws.OpText || !bytes.Equal(f.Payload, payload) {
					t.Fatalf("decoded %v %v, want a final text frame of %d bytes", f.Header, err, n)
				}
				if r.Len() != 0 {
					t.Fatalf("%d bytes after the frame", r.Len())
				}
				if got := frame.Payload(); !bytes.Equal(got, payload) {
					t.Fatalf("Payload has %d bytes, want %d", len(got), n)
				}
			})
		}
	}
}

// TestZeroFrameSendsNothing: the zero Frame is no frame; sending it puts
// no bytes on the wire, so the next frame is the first the client reads,
// and it is not counted as one.
func TestZeroFrameSendsNothing(t *testing.T) {
	h := &echoHandler{}
	opened := make(chan *Conn, 1)
	h.onOpen = func(c *Conn) { opened <- c }
	s, addr := startServer(t, h, Config{})
	conn, br := dialRaw(t, addr)
	c := <-opened
	for _, send := range []func(Frame) error{c.Send, c.Offer, c.SendWait} {
		if err := send(Frame{}); err != nil {
			t.Fatalf("sending the zero Frame: %v", err)
		}
	}
	if err := c.Send(TextFrame([]byte("after"))); err != nil {
		t.Fatal(err)
	}
	if f := readServerFrame(t, conn, br); f.Header.OpCode != ws.OpText || string(f.Payload) != "after" {
		t.Fatalf("read %v %q, want the text frame sent after the zero Frames", f.Header.OpCode, f.Payload)
	}
	if n := s.Stats().FramesOut; n != 1 {
		t.Fatalf("%d frames counted, want the one that was sent", n)
	}
}
