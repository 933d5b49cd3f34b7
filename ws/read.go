package ws

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"unicode/utf8"

	"github.com/gobwas/pool/pbufio"
	"github.com/gobwas/pool/pbytes"
	"github.com/gobwas/ws"
)

// readBufferSize is the pooled reader taken while a connection has input.
// Client messages are small commands; larger frames are read in full into
// a pooled byte slice.
const readBufferSize = 4096

// ready is the epoll callback: the connection has input (or hung up).
func (c *Conn) ready() { c.srv.pool.Schedule(c.readTask) }

// read drains the connection's input, then re-arms its one-shot event.
func (c *Conn) read() {
	// The previous reader re-armed the event under c.mu; taking it here
	// orders this reader after that one for the race detector too (the
	// kernel's epoll orders them in fact).
	c.mu.Lock()
	closed := c.state == stateClosed
	c.mu.Unlock()
	if closed {
		return
	}
	br := pbufio.GetReader(c.nc, readBufferSize)
	err := c.readAll(br)
	pbufio.PutReader(br)
	if err != nil {
		c.fail(err)
		return
	}
	c.mu.Lock()
	if c.state != stateClosed {
		err = c.srv.poll.rearm(c.fd)
	}
	c.mu.Unlock()
	if err != nil {
		c.closeNow()
	}
}

// readAll reads frames while the reader holds buffered input. The first
// read returns at once (epoll said so); later ones only finish a frame.
func (c *Conn) readAll(br *bufio.Reader) error {
	_ = c.nc.SetReadDeadline(timeNow().Add(c.srv.cfg.ReadTimeout))
	for {
		if err := c.readFrame(br); err != nil {
			return err
		}
		if br.Buffered() == 0 {
			return nil
		}
	}
}

func (c *Conn) fail(err error) {
	if errors.Is(err, errStopReading) {
		return
	}
	var ce *closeError
	if errors.As(err, &ce) {
		c.srv.cfg.Logger.Debug("closing on bad input", "remote", c.nc.RemoteAddr(), "err", err)
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

// readHeader parses a frame header without allocating.
func readHeader(br *bufio.Reader) (header, error) {
	b, err := br.Peek(2)
	if err != nil {
		return header{}, err
	}
	h := header{
		fin:    b[0]&0x80 != 0,
		rsv:    (b[0] >> 4) & 0x7,
		op:     b[0] & 0x0F,
		masked: b[1]&0x80 != 0,
		length: int64(b[1] & 0x7F),
	}
	size := 2
	switch h.length {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if h.masked {
		size += 4
	}
	if b, err = br.Peek(size); err != nil {
		return header{}, err
	}
	rest := b[2:]
	switch h.length {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
	case 127:
		u := binary.BigEndian.Uint64(rest)
		if u > 1<<62 {
			return header{}, errTooBig
		}
		h.length = int64(u)
		rest = rest[8:]
	}
	if h.masked {
		copy(h.mask[:], rest)
	}
	_, _ = br.Discard(size)
	return h, nil
}

// readFrame reads and handles one frame.
func (c *Conn) readFrame(br *bufio.Reader) error {
	h, err := readHeader(br)
	if err != nil {
		return err
	}
	c.lastSeen.Store(timeNow().UnixNano())
	if err := c.check(h); err != nil {
		return err
	}
	n := int(h.length)
	var payload, pooled []byte
	if n <= br.Size() {
		if payload, err = br.Peek(n); err != nil {
			return err
		}
		defer br.Discard(n)
	} else {
		pooled = pbytes.GetLen(n)
		defer pbytes.Put(pooled)
		if _, err = io.ReadFull(br, pooled); err != nil {
			return err
		}
		payload = pooled
	}
	ws.Cipher(payload, h.mask, 0)
	return c.handle(h, payload)
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
		if c.frag != nil {
			return errFragmented
		}
		if h.length > int64(c.srv.cfg.MaxMessage) {
			return errTooBig
		}
	case opContinuation:
		if c.frag == nil {
			return errContinuation
		}
		if int64(len(c.frag))+h.length > int64(c.srv.cfg.MaxMessage) {
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
		c.sendControl(AppendFrame(nil, opPong, payload))
		return nil
	case opPong:
		return nil
	case opClose:
		return c.handleClose(payload)
	case opContinuation:
		c.frag = append(c.frag, payload...)
		if !h.fin {
			return nil
		}
		msg, op := c.frag, c.fragOp
		c.frag = nil
		return c.deliver(op, msg)
	}
	if !h.fin {
		c.frag = append(make([]byte, 0, len(payload)), payload...)
		c.fragOp = h.op
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
