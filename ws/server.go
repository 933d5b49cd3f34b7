package ws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// Server accepts TCP connections, upgrades WebSocket requests and serves
// the rest over net/http on the same port.
//
// Lock order: Conn.mu before Server.mu before the epoll's own lock.
//
// Goroutines: Serve starts the HTTP server's, the keepalive sweep and one
// per handshake; Drain waits for all of them (wg, handshakes), so once it
// returns the Handler is called no more.
type Server struct {
	cfg      Config
	poll     *poller
	limiter  *rate.Limiter
	statesMu sync.Mutex
	states   []*upgradeState // idle, at most idleStates
	pending  atomic.Int64    // accepted connections not yet upgraded or handed to HTTP
	pool     *pool
	overflow OverflowHandler // with OverflowDrop
	bulkRoom int             // what SendWait and Offer may fill of MaxQueue
	httpLn   *handoffListener
	httpSrv  *http.Server
	stats    counters

	mu         sync.Mutex
	conns      []*Conn // by fd: fd numbers are dense, and a slot costs 8 bytes
	live       int     // non-nil entries of conns
	reserved   int     // upgrades answered or being answered, not yet registered (MaxConnections counts them)
	ln         net.Listener
	closed     bool
	done       chan struct{}
	wg         sync.WaitGroup        // Serve's HTTP server and keepalive goroutines; Add under mu while open
	handshakes sync.WaitGroup        // handshake goroutines; Add under mu while open
	shaking    map[net.Conn]struct{} // the connections of those handshakes, for Drain to cut
}

// New returns a Server; call Serve to start it.
func New(cfg Config) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("ws: Config.Handler is required")
	}
	cfg = cfg.withDefaults()
	if cfg.Overflow > OverflowDrop {
		return nil, fmt.Errorf("ws: unknown Config.Overflow %d", cfg.Overflow)
	}
	oh, ok := cfg.Handler.(OverflowHandler)
	if cfg.Overflow == OverflowDrop && !ok {
		return nil, errors.New("ws: Config.Overflow OverflowDrop needs a Handler with an Overflow method")
	}
	s := &Server{
		cfg:      cfg,
		overflow: oh,
		// Replies (Send) keep the last sixteenth of the queue: a pong or an
		// error for a client whose queue history fills (SendWait) neither
		// closes it nor drops its events.
		bulkRoom: cfg.MaxQueue - cfg.MaxQueue/16,
		pool:     newPool(cfg.Workers, cfg.WorkerIdle),
		limiter:  rate.NewLimiter(rate.Limit(cfg.UpgradeRate), cfg.UpgradeBurst),
		done:     make(chan struct{}),
		shaking:  make(map[net.Conn]struct{}),
	}
	poll, err := newPoller(func(err error) { cfg.Logger.Error("epoll wait failed", "err", err) })
	if err != nil {
		return nil, err
	}
	s.poll = poll
	s.httpLn = newHandoffListener()
	s.httpSrv = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: cfg.HandshakeTimeout}
	return s, nil
}

// httpHandler serves cfg.HTTP. The WebSocket path only reaches it on a
// kept-alive HTTP connection: upgrades are read off fresh connections.
func (s *Server) httpHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == s.cfg.Path {
			w.Header().Set("Connection", "close")
			http.Error(w, "a WebSocket upgrade must be the first request of its connection", http.StatusBadRequest)
			return
		}
		s.cfg.HTTP.ServeHTTP(w, r)
	})
}

// Serve accepts connections on ln until Shutdown. It always returns a
// non-nil error, ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.httpLn.addr = ln.Addr()
	s.wg.Add(2)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		_ = s.httpSrv.Serve(s.httpLn)
	}()
	go func() {
		defer s.wg.Done()
		s.keepalive()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.stats.accepted.Add(1)
		// A handshake reads from a client that may be slow or hostile, so
		// it gets a goroutine of its own (bounded below and by its
		// deadline) rather than a worker the open connections need.
		if !s.startHandshake(nc) {
			_ = nc.Close() // accepted as Drain closed the listener
			continue
		}
		s.pending.Add(1)
		go s.handshake(nc)
		for s.pending.Load() >= int64(s.cfg.MaxPendingHandshakes) {
			s.stats.cooldowns.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Shutdown stops accepting, closes every connection with code and reason,
// and waits until they are gone or ctx is done, when it cuts the rest.
func (s *Server) Shutdown(ctx context.Context, code uint16, reason string) error {
	return s.Drain(ctx, code, reason, 0)
}

// Drain is Shutdown with the closes spread out: at most perSecond
// connections are closed each second (0: all at once), so clients that
// reconnect elsewhere do not arrive as one storm. Whatever is still open
// when ctx is done is cut: WebSocket connections, handshakes still being
// read, and HTTP requests still being served. Upgrades that finish after
// Drain began are refused (503, or a close frame once answered). Drain
// returns when every goroutine the Server started has ended; a handshake
// waiting in Handler.Accept or Handler.Open holds it until that returns.
func (s *Server) Drain(ctx context.Context, code uint16, reason string, perSecond int) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	if s.ln != nil {
		_ = s.ln.Close()
	}
	conns := s.snapshotLocked()
	s.mu.Unlock()

	s.closePaced(ctx, conns, code, reason, perSecond)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.Len() > 0 {
		select {
		case <-ctx.Done():
			for _, c := range s.snapshot() {
				c.closeNow()
			}
		case <-tick.C:
		}
	}
	s.waitHandshakes(ctx)
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		// Time is up: cut the requests still running (Shutdown leaves
		// them be once ctx is done).
		_ = s.httpSrv.Close()
	}
	s.wg.Wait()
	err := s.poll.close()
	s.pool.close() // after the epoll loop: it schedules no more reads
	return err
}

// startHandshake counts a handshake of nc unless the server is shutting
// down, and reports whether it did.
func (s *Server) startHandshake(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.handshakes.Add(1)
	s.shaking[nc] = struct{}{}
	return true
}

// endHandshake is the end of what startHandshake counted.
func (s *Server) endHandshake(nc net.Conn) {
	s.mu.Lock()
	delete(s.shaking, nc)
	s.mu.Unlock()
	s.handshakes.Done()
}

// waitHandshakes waits for the handshakes under way, which Drain's close
// of the listener left to finish (they are refused); when ctx is done
// first it cuts the reads and writes of those still waiting on their
// client, and waits for them to end.
func (s *Server) waitHandshakes(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.handshakes.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	s.mu.Lock()
	for nc := range s.shaking {
		_ = nc.SetDeadline(time.Unix(1, 0)) // in the past: blocked I/O fails now
	}
	s.mu.Unlock()
	<-done
}

// drainStep is how often a paced drain closes its next batch.
const drainStep = 50 * time.Millisecond

func (s *Server) closePaced(ctx context.Context, conns []*Conn, code uint16, reason string, perSecond int) {
	if perSecond <= 0 {
		perSecond = len(conns) + 1
	}
	start := time.Now()
	for i, c := range conns {
		// Connection i may close once i/perSecond seconds have passed.
		due := start.Add(time.Duration(i) * time.Second / time.Duration(perSecond))
		if wait := time.Until(due); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(max(wait, drainStep)):
			}
		}
		c.Close(code, reason)
	}
}

// Len returns the number of open WebSocket connections.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

func (s *Server) snapshot() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *Server) snapshotLocked() []*Conn {
	return s.appendConnsLocked(make([]*Conn, 0, s.live))
}

// appendConns appends the open connections to dst.
func (s *Server) appendConns(dst []*Conn) []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendConnsLocked(dst)
}

func (s *Server) appendConnsLocked(dst []*Conn) []*Conn {
	for _, c := range s.conns {
		if c != nil {
			dst = append(dst, c)
		}
	}
	return dst
}

// register adds c, whose upgrade reserved its slot, unless the server is
// shutting down.
func (s *Server) register(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved-- // the slot upgrade reserved is c's now, or given back

	if s.closed {
		return false
	}
	for c.fd >= len(s.conns) {
		s.conns = append(s.conns, nil)
	}
	s.conns[c.fd] = c
	s.live++
	s.stats.connections.Add(1)
	return true
}

// reserve takes one of MaxConnections' slots for an upgrade about to be
// answered, so that concurrent handshakes cannot together pass the limit
// and a client that has read its 101 is counted. It reports false when
// the limit is reached. register, or release if the upgrade fails, gives
// the reservation back.
func (s *Server) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.cfg.MaxConnections; max > 0 && s.live+s.reserved >= max {
		return false
	}
	s.reserved++
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	s.reserved--
	s.mu.Unlock()
}

// forget removes c; its caller holds c.mu and has not closed c.fd yet, so
// the slot cannot belong to a new connection.
func (s *Server) forget(c *Conn) {
	s.mu.Lock()
	if c.fd >= 0 && c.fd < len(s.conns) && s.conns[c.fd] == c {
		s.conns[c.fd] = nil
		s.live--
		s.stats.connections.Add(-1)
	}
	s.mu.Unlock()
}

// keepalive pings silent connections, closes idle ones and cuts those
// whose unfinished frame or stalled write outlived its timeout: one
// goroutine for the whole server instead of timers per connection. When
// a burst of upgrades is over it drops the idle handshake states, then
// calls Config.AfterUpgradeBurst (which can return their memory).
func (s *Server) keepalive() {
	tick := time.NewTicker(min(sweepEvery, s.cfg.PingInterval/2))
	defer tick.Stop()
	var lastSettle time.Time
	var settled, last uint64 // upgrade counts: at the last settle, and at the last check
	var conns []*Conn        // reused each sweep: an idle server allocates nothing here
	for {
		select {
		case <-s.done:
			return
		case now := <-tick.C:
			conns = s.appendConns(conns[:0])
			for _, c := range conns {
				if !c.expired(now.UnixNano()) {
					c.keepalive(now)
				}
			}
			clear(conns) // hold no closed connection until the next sweep
			if now.Sub(lastSettle) < settleCheck {
				continue
			}
			lastSettle = now
			up := s.stats.upgraded.Load()
			if up == last && up-settled >= settleBurst {
				s.dropStates()
				if s.cfg.AfterUpgradeBurst != nil {
					s.cfg.AfterUpgradeBurst()
				}
				settled = up
			}
			last = up
		}
	}
}

// dropStates lets go of the idle handshake states once a burst is over:
// kept, the free list's 256 states hold about 600 KB for the next burst,
// 30 B a connection of a gateway holding 19,000.
func (s *Server) dropStates() {
	s.statesMu.Lock()
	clear(s.states)
	s.states = nil
	s.statesMu.Unlock()
}

// sweepEvery is how often, at most, connections are checked for pings and
// timeouts.
const sweepEvery = time.Second

// settleCheck is how often the server looks for the end of a burst of
// upgrades (one check without new upgrades ends it).
const settleCheck = 5 * time.Second

// settleBurst is how many upgrades make a burst worth settling after.
const settleBurst = 1000

// Stats is a snapshot of a Server's counters.
type Stats struct {
	Connections     int64  // open WebSocket connections
	Accepted        uint64 // TCP connections accepted
	Upgraded        uint64 // successful WebSocket upgrades
	HandshakeErrors uint64 // refused or failed upgrades
	MessagesIn      uint64 // client messages delivered to the Handler
	FramesOut       uint64 // frames written
	FramesQueued    uint64 // frames that waited in a connection's queue rather than going straight to the socket
	BytesOut        uint64 // bytes written
	SlowConsumers   uint64 // connections closed with 4001
	Overflows       uint64 // queues that overflowed under OverflowDrop: offered frames dropped
	Refused         uint64 // upgrades refused for the connection or rate limit (503)
	Cooldowns       uint64 // accept-loop pauses for too many pending handshakes
	PoolOverflow    uint64 // tasks run past the worker bound: raise Config.Workers
}

type counters struct {
	connections                                     atomic.Int64
	accepted, upgraded, handshakeErrors, messagesIn atomic.Uint64
	framesOut, bytesOut, slowConsumers, overflows   atomic.Uint64
	framesQueued                                    atomic.Uint64
	refused, cooldowns                              atomic.Uint64
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:     s.stats.connections.Load(),
		Accepted:        s.stats.accepted.Load(),
		Upgraded:        s.stats.upgraded.Load(),
		HandshakeErrors: s.stats.handshakeErrors.Load(),
		MessagesIn:      s.stats.messagesIn.Load(),
		FramesOut:       s.stats.framesOut.Load(),
		FramesQueued:    s.stats.framesQueued.Load(),
		BytesOut:        s.stats.bytesOut.Load(),
		SlowConsumers:   s.stats.slowConsumers.Load(),
		Overflows:       s.stats.overflows.Load(),
		Refused:         s.stats.refused.Load(),
		Cooldowns:       s.stats.cooldowns.Load(),
		PoolOverflow:    s.pool.overflow.Load(),
	}
}

// Queued returns the bytes waiting in the connections' queues, summed, and
// how many connections have some waiting. It visits every connection, one
// lock at a time: for a metrics scrape, not a hot path.
func (s *Server) Queued() (bytes int64, conns int) {
	for _, c := range s.appendConns(nil) {
		c.mu.Lock()
		if q := c.queuedLocked(); q > 0 {
			bytes += int64(q)
			conns++
		}
		c.mu.Unlock()
	}
	return bytes, conns
}

// shuttingDown reports whether Drain has begun.
func (s *Server) shuttingDown() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
