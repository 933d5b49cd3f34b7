package ws

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

var (
	timeNow  = time.Now
	zeroTime time.Time
)

const (
	stateOpen    uint8 = iota
	stateClosing       // close frame queued or sent; waiting for the peer
	stateClosed
)

// closeWait is how long a server-initiated close waits for the client's
// close frame before the socket is cut.
const closeWait = 2 * time.Second

// Conn is one upgraded WebSocket connection: its socket's fd and the
// little state of its queue and reader. Send and Close are safe for
// concurrent use. Every system call on fd happens under mu, and closeNow
// closes fd under mu, so no call can reach a reused fd number.
type Conn struct {
	srv      *Server
	lastSeen atomic.Int64 // unix nanoseconds of the last input
	inSince  atomic.Int64 // unix nanoseconds since in holds an unfinished frame; 0: none
	stalled  atomic.Int64 // unix nanoseconds since a write waits for room; 0: none
	pinged   atomic.Int64 // unix nanoseconds of the last ping
	value    atomic.Value

	mu         sync.Mutex
	fd         int
	state      uint8
	registered bool     // in the epoll set
	reading    bool     // a worker reads: input interest is disarmed
	waitOut    bool     // the writer waits for room: output interest
	writing    bool     // a worker owns the queue's draining
	afterFlush uint8    // 0, or what to do once the queue is empty: see flushed
	spread     uint8    // where in the last quarter of PingInterval its pings fall
	opening    bool     // Server.open has not finished Handler.Open: see closeNow
	out        *backlog // frames waiting; nil while the connection keeps up

	rd *partialInput // touched by the one reading worker only; nil between messages
}

// backlog is what waits to be written to a connection that did not keep
// up. It is made when a write first finds the socket full and dropped when
// it drains and no overflow waits for the Handler: a connection that keeps
// up never has one.
type backlog struct {
	frames  [][]byte      // Frame bytes, shared with other connections
	offered []bool        // by frame: queued by Offer, may be dropped; nil while none was
	queued  int           // bytes in frames
	partial bool          // frames[0] is the unsent rest of a frame already begun on the wire
	room    chan struct{} // closed when the backlog shrinks; made only while SendWait waits

	// Under OverflowDrop: an overflow dropped the offered frames, which
	// wait in dropped until the Handler takes them (Conn.Recover); Offer
	// refuses frames meanwhile.
	overflowed bool
	dropped    []Frame
}

// push queues frame; offered marks a frame Offer may drop.
func (b *backlog) push(frame []byte, offered bool) {
	if offered && b.offered == nil {
		b.offered = make([]bool, len(b.frames), cap(b.frames)+1)
	}
	b.frames = append(b.frames, frame)
	if b.offered != nil {
		b.offered = append(b.offered, offered)
	}
	b.queued += len(frame)
}

// truncate keeps the first n frames.
func (b *backlog) truncate(n int) {
	clear(b.frames[n:])
	b.frames = b.frames[:n]
	if b.offered != nil {
		b.offered = b.offered[:n]
	}
	b.queued = 0
	for _, f := range b.frames {
		b.queued += len(f)
	}
}

// dropOffered moves the frames queued by Offer and not yet begun on the
// wire to dropped, keeping the others in order, and marks the overflow.
func (b *backlog) dropOffered() {
	b.overflowed = true
	if b.offered == nil {
		return
	}
	n := 0
	if b.partial {
		n = 1 // the rest of a frame begun on the wire goes out whole
	}
	for i := n; i < len(b.frames); i++ {
		if b.offered[i] {
			b.dropped = append(b.dropped, Frame{b.frames[i]})
			continue
		}
		b.frames[n], b.offered[n] = b.frames[i], false
		n++
	}
	b.truncate(n)
	b.wake()
}

// wake tells a waiting SendWait that the backlog shrank.
func (b *backlog) wake() {
	if b.room != nil {
		close(b.room)
		b.room = nil
	}
}

func (c *Conn) backlogLocked() *backlog {
	if c.out == nil {
		c.out = &backlog{}
	}
	return c.out
}

// queuedLocked returns the bytes waiting to be written.
func (c *Conn) queuedLocked() int {
	if c.out == nil {
		return 0
	}
	return c.out.queued
}

// idleLocked reports whether nothing is queued and no worker writes: a
// frame may go straight to the socket.
func (c *Conn) idleLocked() bool {
	return !c.writing && (c.out == nil || len(c.out.frames) == 0)
}

const (
	flushNothing   uint8 = iota
	flushHalfClose       // our close frame is out: half-close, wait for the peer
	flushClose           // we answered the peer's close: cut now
)

func newConn(s *Server, fd int) *Conn {
	c := &Conn{srv: s, fd: fd, spread: uint8(uint32(fd) * 2654435761 >> 24)}
	c.lastSeen.Store(timeNow().UnixNano())
	return c
}

// Value returns what SetValue stored, the Handler's per-connection state.
func (c *Conn) Value() any { return c.value.Load() }

// SetValue stores the Handler's per-connection state. Always store the
// same concrete type.
func (c *Conn) SetValue(v any) { c.value.Store(v) }

// RemoteAddr returns the client's address (nil once closed).
func (c *Conn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateClosed {
		return nil
	}
	return peerAddr(c.fd)
}

// Send queues f, a frame that must not be lost such as a reply; its bytes
// are shared, not copied. When the queue would pass Config.MaxQueue the
// connection is closed with 4001 and ErrSlowConsumer returned; under
// OverflowDrop the frames queued by Offer are dropped first (an overflow,
// see Offer), and only what Send and SendWait queued can make it close.
func (c *Conn) Send(f Frame) error { return c.send(f.b, nil) }

// send is Send; a frame that ok, when set, refuses is not queued.
func (c *Conn) send(frame []byte, ok func() bool) error {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return ErrClosed
	}
	if ok != nil && !ok() {
		c.mu.Unlock()
		return nil
	}
	if c.queuedLocked()+len(frame) > c.srv.cfg.MaxQueue && c.out != nil && c.out.offered != nil {
		c.overflowLocked() // only under OverflowDrop does Offer mark frames
	}
	if c.queuedLocked()+len(frame) > c.srv.cfg.MaxQueue {
		c.mu.Unlock()
		c.closeWith(CloseSlowConsumer, "slow consumer: reconnect and resume", true)
		return ErrSlowConsumer
	}
	c.queueLocked(frame, false)
	return nil
}

// Offer queues f, a frame the Handler can send again later, such as a live
// event it can read back from a log. Under OverflowClose it is Send.
// Under OverflowDrop, a frame that would fill the queue past the room
// Send keeps for replies (see bulkRoom) is an overflow: it is refused, the
// frames Offer queued that have not begun on the wire are dropped, and
// the Handler's Overflow is called on a worker; Offer then refuses every
// frame with ErrOverflow until the Handler takes the dropped ones with
// Recover. What Send and SendWait queued is never dropped.
func (c *Conn) Offer(f Frame) error {
	frame := f.b
	if c.srv.cfg.Overflow != OverflowDrop {
		return c.send(frame, nil)
	}
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.out != nil && c.out.overflowed {
		c.mu.Unlock()
		return ErrOverflow
	}
	if queued := c.queuedLocked(); queued > 0 && queued+len(frame) > c.srv.bulkRoom {
		c.overflowLocked()
		c.mu.Unlock()
		return ErrOverflow
	}
	c.queueLocked(frame, true)
	return nil
}

// Recover hands the frames the pending overflow dropped to fn, oldest
// first, then lets Offer queue frames again, and reports whether an
// overflow was pending (fn is only called when one was). Offer refuses
// frames until fn has returned, so fn can stop offering whatever must
// follow the dropped frames before any new frame gets past them; no other
// overflow can happen meanwhile. fn runs without the connection's lock.
func (c *Conn) Recover(fn func(dropped []Frame)) bool {
	c.mu.Lock()
	b := c.out
	if b == nil || !b.overflowed {
		c.mu.Unlock()
		return false
	}
	dropped := b.dropped
	b.dropped = nil
	c.mu.Unlock()
	fn(dropped)
	c.mu.Lock()
	defer c.mu.Unlock()
	b.overflowed = false
	if c.out == b && c.idleLocked() {
		c.dropBacklogLocked() // kept only for the overflow
	}
	return true
}

// overflowLocked drops the frames Offer queued and, unless an overflow
// already waits for the Handler, schedules its Overflow.
func (c *Conn) overflowLocked() {
	b := c.backlogLocked()
	if b.overflowed {
		return
	}
	b.dropOffered()
	c.srv.stats.overflows.Add(1)
	c.srv.pool.schedule(task{c: c, op: taskOverflow})
}

// overflowed runs on a worker: it tells the Handler its frames were dropped.
func (c *Conn) overflowed() {
	c.mu.Lock()
	open := c.state == stateOpen
	c.mu.Unlock()
	if open {
		c.srv.overflow.Overflow(c)
	}
}

// queueLocked writes frame through when nothing waits, else queues it for
// the writer; an empty frame (the zero Frame) is dropped. It runs with
// c.mu held on an open connection and unlocks it.
func (c *Conn) queueLocked(frame []byte, offered bool) {
	if len(frame) == 0 {
		c.mu.Unlock()
		return
	}
	if c.idleLocked() {
		c.writeThroughLocked(frame, offered)
		return
	}
	start := c.pushLocked(frame, offered)
	c.mu.Unlock()
	c.startWriter(start)
}

// writeThroughLocked writes frame straight to the socket without
// blocking, the common case of a connection that keeps up: no queue, no
// worker. What the socket does not take is queued for a worker. It runs
// with c.mu held, an open connection and nothing queued or being written,
// and unlocks c.mu.
func (c *Conn) writeThroughLocked(frame []byte, offered bool) {
	n, err := writeNonblock(c.fd, frame)
	if n > 0 {
		c.srv.stats.bytesOut.Add(uint64(n))
	}
	if err != nil && !errors.Is(err, errWouldBlock) {
		c.writing = true // nothing more goes out; closeNow follows
		c.mu.Unlock()
		c.srv.cfg.Logger.Debug("write failed", "err", err)
		// Never inline: the caller may hold a lock of the Handler's (a
		// topic's fan-out) that Handler.Closed takes.
		c.srv.pool.schedule(task{c: c, op: taskClose})
		return
	}
	if n == len(frame) {
		c.srv.stats.framesOut.Add(1)
		c.mu.Unlock()
		return
	}
	// The socket is full: the rest waits for room, and the epoll event
	// that says so schedules the writer.
	b := c.backlogLocked()
	b.push(frame[n:], offered && n == 0) // a frame begun on the wire goes out whole
	c.srv.stats.framesQueued.Add(1)
	b.partial = n > 0
	c.writing = true
	c.waitOut = true
	c.stalled.CompareAndSwap(0, timeNow().UnixNano())
	c.armLocked()
	c.mu.Unlock()
}

// SendWait is Send for a sender that can wait, such as a replay of
// history: when the queue is too full for f it waits, up to
// Config.WriteTimeout, for the writer to drain it instead of closing the
// connection at once. It fills the queue only up to the room Send keeps
// for replies (see bulkRoom), and what it queues is never dropped.
func (c *Conn) SendWait(f Frame) error { return c.SendWaitIf(f, nil) }

// SendWaitIf is SendWait for a frame that may stop being wanted while it
// waits for room, such as history of a topic the client unsubscribes
// from: ok, when not nil, is asked under the connection's lock right
// before f would be queued, and f is dropped (nil returned) when it says
// no. So whatever is queued after ok turned false, a reply saying so,
// follows f or replaces it. ok must be quick and must take
// no lock held while frames are queued (an atomic load, say).
func (c *Conn) SendWaitIf(f Frame, ok func() bool) error {
	frame := f.b
	deadline := timeNow().Add(c.srv.cfg.WriteTimeout)
	for {
		c.mu.Lock()
		if c.state != stateOpen {
			c.mu.Unlock()
			return ErrClosed
		}
		if queued := c.queuedLocked(); queued == 0 || queued+len(frame) <= c.srv.bulkRoom {
			if ok != nil && !ok() {
				c.mu.Unlock()
				return nil
			}
			c.queueLocked(frame, false)
			return nil
		}
		b := c.backlogLocked()
		if b.room == nil {
			b.room = make(chan struct{})
		}
		room := b.room
		c.mu.Unlock()
		wait := time.Until(deadline)
		if wait <= 0 {
			return c.send(frame, ok) // still no room: the slow-consumer close
		}
		timer := time.NewTimer(wait)
		select {
		case <-room:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// pushLocked queues frame and reports whether the caller must start a
// writer (none owns the queue yet).
func (c *Conn) pushLocked(frame []byte, offered bool) bool {
	c.backlogLocked().push(frame, offered)
	c.srv.stats.framesQueued.Add(1)
	start := !c.writing
	c.writing = true
	return start
}

func (c *Conn) startWriter(start bool) {
	if start {
		c.srv.pool.schedule(task{c: c, op: taskWrite})
	}
}

// Close starts the close handshake with code and reason: frames already
// queued are written first, then the close frame.
func (c *Conn) Close(code uint16, reason string) {
	c.closeWith(code, reason, false)
}

// closeWith queues a close frame; drop discards what is still queued (a
// slow consumer's backlog would only delay the close).
func (c *Conn) closeWith(code uint16, reason string, drop bool) {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return
	}
	c.state = stateClosing
	if code == CloseSlowConsumer {
		c.srv.stats.slowConsumers.Add(1)
	}
	if drop {
		c.dropQueueLocked()
	}
	c.afterFlush = flushHalfClose
	start := c.pushLocked(closeFrame(code, reason), false)
	c.mu.Unlock()
	c.startWriter(start)
}

// replyClose answers the peer's close frame and cuts the connection.
func (c *Conn) replyClose(frame []byte) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	if c.state == stateClosing {
		// Our close frame was queued or sent: the handshake is complete.
		c.mu.Unlock()
		c.closeNow()
		return
	}
	c.state = stateClosing
	c.dropQueueLocked() // the peer is gone: only the answer matters
	c.afterFlush = flushClose
	start := c.pushLocked(frame, false)
	c.mu.Unlock()
	c.startWriter(start)
}

// dropQueueLocked discards the backlog but not the rest of a frame already
// begun on the wire: a close frame must follow whole frames.
func (c *Conn) dropQueueLocked() {
	b := c.out
	if b == nil {
		return
	}
	keep := 0
	if b.partial {
		keep = 1
	}
	b.truncate(keep)
}

// sendControl queues a control frame regardless of the queue limit.
func (c *Conn) sendControl(frame []byte) {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return
	}
	c.queueLocked(frame, false)
}

// write drains the queue, a writev per batch, until it is empty or the
// socket is full; then the connection waits for room in the epoll set and
// the next event schedules write again. No worker ever blocks on a socket.
func (c *Conn) write() {
	c.mu.Lock()
	for {
		if c.state == stateClosed {
			c.writing = false
			c.mu.Unlock()
			return
		}
		if c.out == nil || len(c.out.frames) == 0 {
			c.writing = false
			if c.out != nil && !c.out.overflowed {
				c.dropBacklogLocked() // a connection that keeps up has none
			}
			after := c.afterFlush
			c.mu.Unlock()
			c.flushed(after)
			return
		}
		b := c.out
		n, err := writevNonblock(c.fd, b.frames)
		if n > 0 {
			c.srv.stats.bytesOut.Add(uint64(n))
			c.srv.stats.framesOut.Add(uint64(b.advance(n)))
			b.wake() // the queue has room again
		}
		switch {
		case errors.Is(err, errWouldBlock) || err == nil && len(b.frames) > 0 && n == 0:
			c.waitOut = true
			c.stalled.CompareAndSwap(0, timeNow().UnixNano())
			c.armLocked()
			c.mu.Unlock()
			return
		case err != nil:
			c.mu.Unlock()
			c.srv.cfg.Logger.Debug("write failed", "err", err)
			c.closeNow()
			return
		}
		c.stalled.Store(0)
	}
}

// advance drops n written bytes from the backlog and returns how many
// frames were completed.
func (b *backlog) advance(n int) int {
	b.queued -= n
	done := 0
	for n > 0 {
		f := b.frames[0]
		if n < len(f) {
			b.frames[0] = f[n:]
			b.partial = true
			return done
		}
		n -= len(f)
		b.frames[0] = nil
		b.frames = b.frames[1:]
		if b.offered != nil {
			b.offered = b.offered[1:]
		}
		b.partial = false
		done++
	}
	return done
}

// dropBacklogLocked forgets the backlog, waking a SendWait that waits on it.
func (c *Conn) dropBacklogLocked() {
	if c.out != nil {
		c.out.wake()
	}
	c.out = nil
}

// armLocked re-arms the one-shot epoll registration with what the
// connection still waits for: input unless a worker is reading it, room to
// write while the writer waits.
func (c *Conn) armLocked() {
	if !c.registered || c.state == stateClosed {
		return
	}
	ev := c.interestLocked()
	if ev == 0 {
		return
	}
	if err := c.srv.poll.mod(c.fd, ev); err != nil {
		c.srv.cfg.Logger.Error("re-arming a connection", "err", err)
		c.srv.pool.schedule(task{c: c, op: taskClose})
	}
}

func (c *Conn) interestLocked() uint32 {
	var ev uint32
	if !c.reading {
		ev |= pollIn
	}
	if c.waitOut {
		ev |= pollOut
	}
	return ev
}

// event is the epoll callback: input, room to write, or a hang-up. The
// registration is one-shot, so what fired is disarmed until a worker has
// handled it; what did not fire is re-armed at once.
func (c *Conn) event(ev uint32) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	read := !c.reading && ev&(pollIn|pollErr) != 0
	write := c.waitOut && ev&(pollOut|pollErr) != 0
	if read {
		c.reading = true
	}
	if write {
		c.waitOut = false
	}
	c.armLocked()
	c.mu.Unlock()
	if read {
		c.srv.pool.schedule(task{c: c, op: taskRead})
	}
	if write {
		c.srv.pool.schedule(task{c: c, op: taskWrite})
	}
}

func (c *Conn) flushed(after uint8) {
	switch after {
	case flushClose:
		c.closeNow()
	case flushHalfClose:
		c.mu.Lock()
		if c.state != stateClosed {
			_ = shutdownWrite(c.fd)
		}
		c.mu.Unlock()
		time.AfterFunc(closeWait, c.closeNow)
	}
}

// closeNow cuts the connection and tells the Handler, once. A connection
// cut while it opens (a drain's deadline) is the Handler's only once
// Handler.Open has returned: until then Server.open tells it instead, after
// Open, or never when Open was not called.
func (c *Conn) closeNow() {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state = stateClosed
	c.dropBacklogLocked() // a waiting SendWait finds the connection closed
	if c.registered {
		_ = c.srv.poll.del(c.fd) // before closing: the number may be reused at once
	}
	c.srv.forget(c)
	if c.fd >= 0 {
		_ = closeFD(c.fd)
	}
	c.fd = -1
	opening := c.opening
	c.mu.Unlock()
	if !opening {
		c.srv.cfg.Handler.Closed(c)
	}
}

// expired cuts a connection whose unfinished frame or stalled write has
// outlived its timeout, and reports whether it did.
func (c *Conn) expired(now int64) bool {
	if t := c.inSince.Load(); t != 0 && now-t > int64(c.srv.cfg.ReadTimeout) {
		c.srv.cfg.Logger.Debug("closing: frame not finished in time")
		c.closeNow()
		return true
	}
	if t := c.stalled.Load(); t != 0 && now-t > int64(c.srv.cfg.WriteTimeout) {
		c.srv.cfg.Logger.Debug("closing: client takes no data")
		c.closeNow()
		return true
	}
	return false
}

// keepalive pings a silent connection and closes an idle one.
func (c *Conn) keepalive(now time.Time) {
	silent := now.Sub(time.Unix(0, c.lastSeen.Load()))
	ping := c.srv.cfg.PingInterval
	ping -= ping / 4 * time.Duration(255-c.spread) / 256
	switch {
	case silent > c.srv.cfg.IdleTimeout:
		c.Close(CloseGoingAway, "idle timeout")
	case silent > ping && now.Sub(time.Unix(0, c.pinged.Load())) > ping:
		c.pinged.Store(now.UnixNano())
		c.sendControl(pingFrame)
	}
}
