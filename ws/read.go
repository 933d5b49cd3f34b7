package ws

import (
	"encoding/binary"
	"errors"
	"io"
	"unicode/utf8"

	"github.com/gobwas/pool/pbytes"
	"github.com/gobwas/ws"
)

// readBufferSize is the pooled buffer a worker reads into while a
// connection has input. Client messages are small commands; a frame that
// does not arrive whole waits in a buffer of its own size (see keep).
const readBufferSize = 4096

// maxReadsPerEvent bounds the reads of one event, so a client that streams
// cannot hold a worker: the one-shot event fires again when re-armed.
const maxReadsPerEvent = 16

// maxHeader is the largest frame header: 2 bytes, 8 of length, 4 of mask.
const maxHeader = 14

// read drains the connection's input, then re-arms its one-shot event.
func (c *Conn) read() {
	buf := pbytes.GetLen(readBufferSize)
	defer pbytes.Put(buf)
	for range maxReadsPerEvent {
		dst := c.readInto(buf)
		c.mu.Lock()
		if c.state == stateClosed {
			c.mu.Unlock()
			return
		}
		n, err := readNonblock(c.fd, dst)
		c.mu.Unlock()
		if errors.Is(err, errWouldBlock) {
			break
		}
		if err == nil && n == 0 {
			err = io.EOF
		}
		if err != nil {
			c.fail(err)
			return
		}
		c.lastSeen.Store(timeNow().UnixNano())
		if err := c.received(buf, n); err != nil {
			c.fail(err)
			return
		}
		if n < len(dst) {
			break // drained
		}
	}
	c.mu.Lock()
	c.reading = false
	c.armLocked()
	c.mu.Unlock()
}

// readInto returns where the next read goes: after the unfinished frame
// when there is one (never past its end), else into buf.
func (c *Conn) readInto(buf []byte) []byte {
	if in := c.held(); in != nil {
		return in[len(in):cap(in)]
	}
	return buf
}

// received handles n bytes just read into readInto(buf).
func (c *Conn) received(buf []byte, n int) error {
	if in := c.held(); in != nil {
		in = in[:len(in)+n]
		c.rd.in = in
		return c.consume(in)
	}
	return c.consume(buf[:n])
}

// consume handles every whole frame of data and keeps the unfinished rest.
func (c *Conn) consume(data []byte) error {
	for {
		h, size, err := parseHeader(data)
		if err != nil {
			return err
		}
		if size == 0 {
			return c.keep(data, maxHeader)
		}
		if err := c.check(h); err != nil {
			return err
		}
		end := size + int(h.length)
		if len(data) < end {
			return c.keep(data, end)
		}
		payload := data[size:end]
		ws.Cipher(payload, h.mask, 0)
		if err := c.handle(h, payload); err != nil {
			return err
		}
		data = data[end:]
	}
}

// keep holds the start of an unfinished frame, in a buffer with room for
// need bytes (the whole frame once its header is known), and times it.
func (c *Conn) keep(rest []byte, need int) error {
	if len(rest) == 0 {
		c.setHeld(nil)
		c.inSince.Store(0)
		return nil
	}
	if in := c.held(); in != nil && cap(in) >= need {
		c.setHeld(in[:copy(in, rest)]) // rest may sit inside in: copy moves it down
	} else {
		in := make([]byte, len(rest), need)
		copy(in, rest)
		c.setHeld(in)
	}
	c.inSince.CompareAndSwap(0, timeNow().UnixNano())
	return nil
}

func (c *Conn) fail(err error) {
	if errors.Is(err, errStopReading) {
		return
	}
	var ce *closeError
	if errors.As(err, &ce) {
		c.srv.cfg.Logger.Debug("closing on bad input", "err", err)
		c.Close(ce.code, ce.reason)
		// Its input is garbage now; wait for the peer's close only in
		// flushed's timer, reading no more.
		return
	}
	c.closeNow()
}

// header is a parsed client frame header.
type header struct {
	fin    bool
	rsv    byte
	op     byte
	masked bool
	length int64
	mask   [4]byte
}

// partialInput is what a connection's reader holds between reads: the
// start of a frame, a message of several fragments. Most connections never
// need one, and none keeps one once it is done with them.
type partialInput struct {
	in     []byte // the start of a frame whose rest has not arrived
	frag   []byte // message being reassembled from fragments
	fragOp byte
}

func (c *Conn) held() []byte {
	if c.rd == nil {
		return nil
	}
	return c.rd.in
}

func (c *Conn) fragment() []byte {
	if c.rd == nil {
		return nil
	}
	return c.rd.frag
}

func (c *Conn) setHeld(in []byte) {
	if in == nil && c.rd == nil {
		return
	}
	if c.rd == nil {
		c.rd = &partialInput{}
	}
	c.rd.in = in
	c.tidy()
}

func (c *Conn) setFragment(frag []byte, op byte) {
	if frag == nil && c.rd == nil {
		return
	}
	if c.rd == nil {
		c.rd = &partialInput{}
	}
	c.rd.frag, c.rd.fragOp = frag, op
	c.tidy()
}

// tidy drops the partialInput once it holds nothing.
func (c *Conn) tidy() {
	if c.rd.in == nil && c.rd.frag == nil {
		c.rd = nil
	}
}

// parseHeader parses the frame header at the start of b. size is 0 when
// b does not hold all of it yet.
func parseHeader(b []byte) (h header, size int, err error) {
	if len(b) < 2 {
		return header{}, 0, nil
	}
	h = header{
		fin:    b[0]&0x80 != 0,
		rsv:    (b[0] >> 4) & 0x7,
		op:     b[0] & 0x0F,
		masked: b[1]&0x80 != 0,
		length: int64(b[1] & 0x7F),
	}
	size = 2
	switch h.length {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if h.masked {
		size += 4
	}
	if len(b) < size {
		return header{}, 0, nil
	}
	rest := b[2:]
	switch h.length {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
	case 127:
		u := binary.BigEndian.Uint64(rest)
		if u > 1<<62 {
			return header{}, 0, errTooBig
		}
		h.length = int64(u)
		rest = rest[8:]
	}
	if h.masked {
		copy(h.mask[:], rest)
	}
	return h, size, nil
}

// check applies RFC 6455's rules that need only the header.
func (c *Conn) check(h header) error {
	switch {
	case !h.masked:
		return errNotMasked
	case h.rsv != 0:
		return errReservedBits // no extension is negotiated
	}
	switch h.op {
	case opClose, opPing, opPong:
		if !h.fin || h.length > 125 {
			return errControlFrame
		}
	case opText, opBinary:
		if c.fragment() != nil {
			return errFragmented
		}
		if h.length > int64(c.srv.cfg.MaxMessage) {
			return errTooBig
		}
	case opContinuation:
		if c.fragment() == nil {
			return errContinuation
		}
		if int64(len(c.fragment()))+h.length > int64(c.srv.cfg.MaxMessage) {
			return errTooBig
		}
	default:
		return errReservedOp
	}
	return nil
}

func (c *Conn) handle(h header, payload []byte) error {
	switch h.op {
	case opPing:
		c.sendControl(appendFrame(nil, opPong, payload))
		return nil
	case opPong:
		return nil
	case opClose:
		return c.handleClose(payload)
	case opContinuation:
		msg := append(c.fragment(), payload...)
		op := c.rd.fragOp
		if !h.fin {
			c.setFragment(msg, op)
			return nil
		}
		c.setFragment(nil, 0)
		return c.deliver(op, msg)
	}
	if !h.fin {
		c.setFragment(append(make([]byte, 0, len(payload)), payload...), h.op)
		return nil
	}
	return c.deliver(h.op, payload)
}

func (c *Conn) deliver(op byte, msg []byte) error {
	if op == opText && !utf8.Valid(msg) {
		return errInvalidUTF8
	}
	c.mu.Lock()
	open := c.state == stateOpen
	c.mu.Unlock()
	if !open {
		return nil // closing: the handshake only waits for the peer's close
	}
	c.srv.stats.messagesIn.Add(1)
	c.srv.cfg.Handler.Message(c, msg)
	return nil
}

// handleClose validates the peer's close frame and answers it.
func (c *Conn) handleClose(payload []byte) error {
	code := uint16(CloseNormal)
	switch {
	case len(payload) == 1:
		return errBadClose
	case len(payload) >= 2:
		code = binary.BigEndian.Uint16(payload)
		if !validCloseCode(code) {
			return errBadClose
		}
		if !utf8.Valid(payload[2:]) {
			return errInvalidUTF8
		}
	}
	c.replyClose(closeFrame(code, ""))
	return errStopReading // replyClose cuts the connection once the reply is out
}

// validCloseCode reports whether a peer may send code (RFC 6455 7.4).
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
