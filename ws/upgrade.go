package ws

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
)

// handshake routes a new connection: an upgrade of cfg.Path is answered
// here, anything else goes to net/http.
func (s *Server) handshake(nc net.Conn) {
	defer s.endHandshake(nc)
	defer s.pending.Add(-1)
	st := s.getState(nc)
	defer s.putState(st)
	err := s.upgrade(st)
	if err != nil && st.reserved {
		s.release()
	}
	switch {
	case errors.Is(err, errNotWebSocket):
		pc := &prefixConn{Conn: nc, prefix: append([]byte(nil), st.buf[:st.n]...)}
		_ = nc.SetDeadline(zeroTime)
		s.httpLn.push(pc)
	case errors.Is(err, errRateLimited):
		s.stats.refused.Add(1)
		_, _ = nc.Write(response503)
		_ = nc.Close()
	case err != nil:
		s.stats.handshakeErrors.Add(1)
		s.cfg.Logger.Debug("upgrade refused", "remote", nc.RemoteAddr(), "err", err)
		switch {
		case errors.Is(err, errHandshakeTooLarge):
			_, _ = nc.Write(response431)
		case errors.Is(err, errHandshakeIO):
		default:
			_, _ = nc.Write(refusal(err))
		}
		_ = nc.Close()
	default:
		_ = nc.SetDeadline(zeroTime)
		s.open(nc, &st.req, st.buf[st.head:st.n])
	}
}

// upgradeState is the pooled state of one handshake: the request is read
// and parsed in buf, and the answer built in out.
type upgradeState struct {
	conn net.Conn
	req  Request
	buf  []byte // Config.MaxHandshakeBytes
	n    int    // bytes read into buf
	head int    // length of the request head; buf[head:n] came after it
	out  []byte

	reserved bool // holds a connection slot (Server.reserve) until open registers it
}

var (
	errNotWebSocket = errors.New("ws: not a WebSocket upgrade of the endpoint")
	errRateLimited  = errors.New("ws: upgrade rate limit")
	errHandshakeIO  = errors.New("ws: connection failed during the handshake")
)

// Handshake states are kept on a short free list rather than in a
// sync.Pool, which every GC empties: during a burst of connections that
// made each cycle's concurrent handshakes allocate their buffers again.
// A state starts with a buffer for a common request and grows it to
// Config.MaxHandshakeBytes only for a larger one, which is not kept.
const (
	handshakeBuf = 2 << 10
	idleStates   = 256
)

func (s *Server) getState(nc net.Conn) *upgradeState {
	var st *upgradeState
	s.statesMu.Lock()
	if n := len(s.states); n > 0 {
		st = s.states[n-1]
		s.states[n-1] = nil
		s.states = s.states[:n-1]
	}
	s.statesMu.Unlock()
	if st == nil {
		st = &upgradeState{buf: make([]byte, min(handshakeBuf, s.cfg.MaxHandshakeBytes)), out: make([]byte, 0, 160)}
	}
	st.req.RemoteAddr = nc.RemoteAddr()
	st.conn = nc
	return st
}

func (s *Server) putState(st *upgradeState) {
	if len(st.buf) > handshakeBuf {
		return
	}
	st.req = Request{}
	st.conn = nil
	st.reserved = false
	st.n, st.head = 0, 0
	s.statesMu.Lock()
	if len(s.states) < idleStates {
		s.states = append(s.states, st)
	}
	s.statesMu.Unlock()
}

// upgrade reads the request and, for a GET of the endpoint, answers the
// WebSocket handshake. Refusals are answered by the caller.
func (s *Server) upgrade(st *upgradeState) error {
	nc := st.conn
	deadline := timeNow().Add(s.cfg.HandshakeTimeout)
	_ = nc.SetDeadline(deadline)
	n, isWS := s.peek(nc, st.buf)
	st.n = n
	switch {
	case n == 0:
		return errHandshakeIO
	case !isWS:
		return errNotWebSocket
	case !s.admit(deadline):
		return errRateLimited
	}
	for st.head = headerEnd(st.buf[:st.n]); st.head < 0; st.head = headerEnd(st.buf[:st.n]) {
		if st.n == len(st.buf) {
			if len(st.buf) >= s.cfg.MaxHandshakeBytes {
				return errHandshakeTooLarge
			}
			st.buf = slices.Grow(st.buf, s.cfg.MaxHandshakeBytes-len(st.buf))[:s.cfg.MaxHandshakeBytes]
		}
		m, err := nc.Read(st.buf[st.n:])
		if m == 0 && err != nil {
			return errHandshakeIO
		}
		st.n += m
	}
	key, err := parseHandshake(st.buf[:st.head], &st.req)
	if err != nil {
		return err
	}
	if !s.reserve() {
		s.stats.refused.Add(1)
		return rejectFull
	}
	st.reserved = true
	if err := s.cfg.Handler.Accept(&st.req); err != nil {
		return err
	}
	if s.shuttingDown() {
		return rejectClosing // not upgraded only to be closed
	}
	st.out = appendAccept(st.out[:0], key)
	if _, err := nc.Write(st.out); err != nil {
		return errHandshakeIO
	}
	return nil
}

// admit waits for the upgrade rate limiter, refusing when the wait would
// outlast the handshake deadline.
func (s *Server) admit(deadline time.Time) bool {
	if s.limiter.Allow() {
		return true
	}
	r := s.limiter.Reserve()
	delay := r.Delay()
	if !r.OK() || timeNow().Add(delay).After(deadline) {
		r.Cancel()
		return false
	}
	time.Sleep(delay)
	return true
}

var (
	response503 = httpResponse("503 Service Unavailable", "Retry-After: 1\r\n", "upgrade rate limit reached; retry\n")
	response431 = httpResponse("431 Request Header Fields Too Large", "", "handshake too large\n")
)

// httpResponse is a complete plain-text answer that closes the connection.
func httpResponse(status, header, body string) []byte {
	return []byte("HTTP/1.1 " + status + "\r\n" + header + "Content-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body)
}

// peek reads into buf until it holds the start of the request line, and
// reports whether it is a GET of the WebSocket path. A request that came in
// one packet is then read whole, with one read.
func (s *Server) peek(nc net.Conn, buf []byte) (int, bool) {
	want := len("GET ") + len(s.cfg.Path) + 1
	n := 0
	for n < want && n < len(buf) {
		m, err := nc.Read(buf[n:])
		n += m
		if err != nil || bytes.IndexByte(buf[:n], '\n') >= 0 {
			break
		}
	}
	line := buf[:n]
	if n < want || !bytes.HasPrefix(line, []byte("GET ")) || !bytes.HasPrefix(line[4:], []byte(s.cfg.Path)) {
		return n, false
	}
	next := line[4+len(s.cfg.Path)]
	return n, next == ' ' || next == '?'
}

// open hands an upgraded connection to the epoll loop, keeping only its
// fd. It is registered before Handler.Open, which may send more than the
// socket takes at once (a replay of history), but its input waits until
// Open has returned.
//
// A drain may cut the connection (closeNow) at any moment once it is
// registered, its fd closed at once: so open adds the fd to the epoll set
// only under c.mu and only while the connection is not closed, never
// reaching a closed or reused fd number. A connection cut before that is
// dropped without Open; one cut during Open is Closed after it returns
// (see closeNow). Drain waits for every open to finish.
func (s *Server) open(nc net.Conn, req *Request, early []byte) {
	fd, err := detachFD(nc)
	if err != nil {
		s.release()
		s.cfg.Logger.Error("taking the socket of an upgraded connection", "err", err)
		_ = nc.Close()
		return
	}
	c := newConn(s, fd)
	c.opening = true // before it is shared: register publishes it
	if !s.register(c) {
		_, _ = writeNonblock(fd, closeFrame(CloseGoingAway, errServerClosing.reason))
		_ = closeFD(fd)
		return
	}
	if testHookRegistered != nil {
		testHookRegistered()
	}
	if !s.enroll(c) {
		return
	}
	s.stats.upgraded.Add(1)
	s.cfg.Handler.Open(c, req)
	c.mu.Lock()
	c.opening = false
	cut := c.state == stateClosed
	c.mu.Unlock()
	if cut { // during Open: the Handler hears of it now, after Open
		s.cfg.Handler.Closed(c)
		return
	}
	if len(early) > 0 {
		// Frames the client sent right behind its request.
		if err := c.consume(early); err != nil {
			c.fail(err)
			return
		}
	}
	c.mu.Lock()
	c.reading = false
	c.armLocked()
	c.mu.Unlock()
}

// enroll adds a registered connection to the epoll set, with no input
// interest until Handler.Open has returned, and reports whether it did:
// not when the connection was cut meanwhile, or epoll refused it (then it
// is cut here). Neither case reaches the Handler.
func (s *Server) enroll(c *Conn) bool {
	c.mu.Lock()
	if c.state == stateClosed { // cut by a drain: its fd is closed already
		c.mu.Unlock()
		return false
	}
	c.reading = true // no input before Open
	err := s.poll.add(c.fd, c.interestLocked(), c)
	c.registered = err == nil
	c.mu.Unlock()
	if err != nil {
		s.cfg.Logger.Error("registering connection with epoll", "err", err)
		c.closeNow() // still opening: no Closed
		return false
	}
	return true
}

// testHookRegistered, when set, runs in open between register and enroll:
// the window a drain can cut a connection in before it is in the epoll set.
var testHookRegistered func()

// prefixConn replays the bytes peeked from a connection before reading
// on: net/http gets a request that is not an upgrade whole.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// handoffListener feeds non-WebSocket connections to net/http.
type handoffListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func newHandoffListener() *handoffListener {
	return &handoffListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
