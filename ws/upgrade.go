package ws

import (
	"bytes"
	"net"
	"sync"

	"github.com/gobwas/ws"
)

// peekSize is enough of the request line to tell "GET /v1/ws" from
// anything else.
const peekSize = 64

// handshake routes a new connection: an upgrade of cfg.Path is done here
// with gobwas/ws, anything else goes to net/http.
func (s *Server) handshake(nc net.Conn) {
	_ = nc.SetDeadline(timeNow().Add(s.cfg.HandshakeTimeout))
	var head [peekSize]byte
	n, isWS := s.peek(nc, head[:])
	if n == 0 {
		_ = nc.Close()
		return
	}
	pc := &prefixConn{Conn: nc, prefix: head[:n]}
	if !isWS {
		_ = nc.SetDeadline(zeroTime)
		s.httpLn.push(pc)
		return
	}
	req := &Request{RemoteAddr: nc.RemoteAddr().String()}
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			req.URI = string(uri)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			switch {
			case bytes.EqualFold(key, []byte("Origin")):
				req.Origin = string(value)
			case bytes.EqualFold(key, []byte("Authorization")):
				req.Authorization = string(value)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			return nil, s.cfg.Handler.Accept(req)
		},
	}
	if _, err := u.Upgrade(pc); err != nil {
		s.stats.handshakeErrors.Add(1)
		s.cfg.Logger.Debug("upgrade refused", "remote", req.RemoteAddr, "err", err)
		_ = nc.Close()
		return
	}
	_ = nc.SetDeadline(zeroTime)
	s.open(nc, req)
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

// open hands an upgraded connection to the epoll loop.
func (s *Server) open(nc net.Conn, req *Request) {
	fd, err := socketFD(nc)
	if err != nil {
		_ = nc.Close()
		return
	}
	c := newConn(s, nc, fd)
	if !s.register(c) {
		_, _ = nc.Write(closeFrame(CloseGoingAway, errServerClosing.reason))
		_ = nc.Close()
		return
	}
	s.stats.upgraded.Add(1)
	s.cfg.Handler.Open(c, req)
	c.mu.Lock()
	if c.state != stateClosed {
		err = s.poll.add(fd, c.ready)
	}
	c.mu.Unlock()
	if err != nil {
		s.cfg.Logger.Error("registering connection with epoll", "err", err)
		c.closeNow()
	}
}

// prefixConn replays the bytes peeked from a connection before reading on.
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
