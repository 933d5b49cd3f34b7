package ws

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// peekSize is enough of the request line to tell "GET /v1/ws" from
// anything else.
const peekSize = 64

// handshake routes a new connection: an upgrade of cfg.Path is done here
// with gobwas/ws, anything else goes to net/http.
func (s *Server) handshake(nc net.Conn) {
	defer s.pending.Add(-1)
	st := s.getState(nc)
	err := s.upgrade(st)
	switch {
	case errors.Is(err, errNotWebSocket):
		pc := &prefixConn{Conn: nc, prefix: append([]byte(nil), st.pc.prefix...), left: -1}
		_ = nc.SetDeadline(zeroTime)
		s.httpLn.push(pc)
	case errors.Is(err, errRateLimited):
		s.stats.refused.Add(1)
		_, _ = nc.Write(response503)
		_ = nc.Close()
	case err != nil:
		s.stats.handshakeErrors.Add(1)
		s.cfg.Logger.Debug("upgrade refused", "remote", nc.RemoteAddr(), "err", err)
		if errors.Is(err, errHandshakeTooLarge) {
			_, _ = nc.Write(response431)
		}
		_ = nc.Close()
	default:
		_ = nc.SetDeadline(zeroTime)
		s.open(nc, &st.req)
	}
	s.putState(st)
}

// upgradeState is the pooled state of one handshake: the upgrader's
// callbacks are bound to it once, so an upgrade allocates nothing.
type upgradeState struct {
	req  Request
	pc   prefixConn
	u    ws.Upgrader
	head [peekSize]byte
	// Backing arrays of the Request's byte fields.
	uri, host, origin, auth []byte
}

var errNotWebSocket = errors.New("ws: not a WebSocket upgrade of the endpoint")
var errRateLimited = errors.New("ws: upgrade rate limit")

func (s *Server) newState() *upgradeState {
	st := &upgradeState{}
	st.u = ws.Upgrader{
		OnRequest: func(uri []byte) error {
			st.uri = append(st.uri[:0], uri...)
			st.req.URI = st.uri
			return nil
		},
		OnHost: func(host []byte) error {
			st.host = append(st.host[:0], host...)
			st.req.Host = st.host
			return nil
		},
		OnHeader: func(key, value []byte) error {
			switch {
			case bytes.EqualFold(key, headerOrigin):
				st.origin = append(st.origin[:0], value...)
				st.req.Origin = st.origin
			case bytes.EqualFold(key, headerAuthorization):
				st.auth = append(st.auth[:0], value...)
				st.req.Authorization = st.auth
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if max := s.cfg.MaxConnections; max > 0 && s.Len() >= max {
				s.stats.refused.Add(1)
				return nil, rejectFull
			}
			return nil, s.cfg.Handler.Accept(&st.req)
		},
	}
	return st
}

var (
	headerOrigin        = []byte("Origin")
	headerAuthorization = []byte("Authorization")
	rejectFull          = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable),
		ws.RejectionReason("connection limit reached; retry another node"),
		ws.RejectionHeader(ws.HandshakeHeaderString("Retry-After: 1\r\n")))
)

func (s *Server) getState(nc net.Conn) *upgradeState {
	st, _ := s.states.Get().(*upgradeState)
	if st == nil {
		st = s.newState()
	}
	st.req.RemoteAddr = nc.RemoteAddr()
	st.pc.Conn = nc
	return st
}

func (s *Server) putState(st *upgradeState) {
	st.req = Request{}
	st.pc = prefixConn{}
	s.states.Put(st)
}

// upgrade reads the start of the request and, for a GET of the endpoint,
// answers the WebSocket handshake.
func (s *Server) upgrade(st *upgradeState) error {
	deadline := timeNow().Add(s.cfg.HandshakeTimeout)
	_ = st.pc.Conn.SetDeadline(deadline)
	n, isWS := s.peek(st.pc.Conn, st.head[:])
	st.pc.prefix, st.pc.left = st.head[:n], s.cfg.MaxHandshakeBytes
	switch {
	case n == 0:
		return io.ErrUnexpectedEOF
	case !isWS:
		return errNotWebSocket
	case !s.admit(deadline):
		return errRateLimited
	}
	_, err := st.u.Upgrade(&st.pc)
	return err
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

// peek reads the start of the request line and reports whether it is a
// GET of the WebSocket path.
func (s *Server) peek(nc net.Conn, buf []byte) (int, bool) {
	want := len("GET ") + len(s.cfg.Path) + 1
	n := 0
	for n < want {
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
func (s *Server) open(nc net.Conn, req *Request) {
	fd, err := detachFD(nc)
	if err != nil {
		s.cfg.Logger.Error("taking the socket of an upgraded connection", "err", err)
		_ = nc.Close()
		return
	}
	c := newConn(s, fd)
	if !s.register(c) {
		_, _ = writeNonblock(fd, closeFrame(CloseGoingAway, errServerClosing.reason))
		_ = closeFD(fd)
		return
	}
	c.mu.Lock()
	c.reading = true // no input before Open
	err = s.poll.add(fd, c.interestLocked(), c)
	c.registered = err == nil
	c.mu.Unlock()
	if err != nil {
		s.cfg.Logger.Error("registering connection with epoll", "err", err)
		c.mu.Lock()
		c.state = stateClosed
		s.forget(c)
		_ = closeFD(fd)
		c.fd = -1
		c.mu.Unlock()
		return
	}
	s.stats.upgraded.Add(1)
	s.cfg.Handler.Open(c, req)
	c.mu.Lock()
	c.reading = false
	c.armLocked()
	c.mu.Unlock()
}

// prefixConn replays the bytes peeked from a connection before reading
// on, and fails once left bytes were read (left < 0: no limit), since
// gobwas/ws reads header lines of any length.
type prefixConn struct {
	net.Conn
	prefix []byte
	left   int
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, errHandshakeTooLarge
	}
	if c.left > 0 && len(p) > c.left {
		p = p[:c.left]
	}
	var n int
	var err error
	if len(c.prefix) > 0 {
		n = copy(p, c.prefix)
		c.prefix = c.prefix[n:]
	} else {
		n, err = c.Conn.Read(p)
	}
	if c.left > 0 {
		c.left -= n
	}
	return n, err
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
