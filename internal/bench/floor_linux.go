//go:build linux

package bench

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// floor is the floor baseline's fan-out: the least work any server must do
// to put one event on many sockets of this machine, so that the gateway's
// figures have something honest to be read against. It is all of:
//
//   - the frame encoded once per event, the same bytes for every socket;
//   - the sockets split into one shard per core (GOMAXPROCS), each shard
//     written by its own goroutine, so every core writes, as the gateway's
//     do;
//   - one non-blocking write(2) per socket; a socket that takes only part
//     keeps the rest queued, and the shard's epoll wakes it when there is
//     room (EPOLLOUT, the gateway's wake-up for a full socket), so a slow
//     client costs the others nothing;
//
// and nothing else: no goroutine, buffer or reader per connection, no
// protocol past the handshake and "subscribed", and no slow-consumer
// limit (a queue grows without bound, which can only flatter the floor).
// Whatever a server does beyond this is its overhead.
type floor struct {
	shards []*floorShard
	next   atomic.Uint32 // the shard of the next connection, round robin
	wg     sync.WaitGroup
}

// floorShard is one core's share of the connections. Its writer goroutine
// writes the frames that come on frames; its poller goroutine finishes the
// writes of sockets that were full and closes those the client left.
// mu guards the connections between the two (and add).
type floorShard struct {
	epfd   int
	frames chan floorFrame

	mu     sync.Mutex
	topics map[string][]*floorConn // by live channel; closed ones are dropped on the next write
	byFD   map[int]*floorConn
}

// floorFrame is one event for the connections of a live channel.
type floorFrame struct {
	channel string
	b       []byte
}

// floorConn is a connection: its fd and what the socket has not taken yet.
type floorConn struct {
	fd    int // -1 once closed
	queue [][]byte
	armed bool // registered for EPOLLOUT
}

// Interest of a floor socket: the client leaving, and room to write while
// something is queued. EPOLLIN is left out: bench clients send nothing the
// floor needs to read.
const (
	floorIdle = syscall.EPOLLRDHUP
	floorFull = syscall.EPOLLRDHUP | syscall.EPOLLOUT
)

// newFloor starts a shard per GOMAXPROCS; they stop when ctx ends, and
// wait returns once they have.
func newFloor(ctx context.Context) (*floor, error) {
	f := &floor{}
	for range runtime.GOMAXPROCS(0) {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return nil, err
		}
		sh := &floorShard{epfd: epfd, frames: make(chan floorFrame, 1024),
			topics: map[string][]*floorConn{}, byFD: map[int]*floorConn{}}
		f.shards = append(f.shards, sh)
		f.wg.Add(2)
		go func() { defer f.wg.Done(); sh.write(ctx) }()
		go func() { defer f.wg.Done(); sh.poll(ctx) }()
	}
	return f, nil
}

// wait returns once every shard's goroutines have ended.
func (f *floor) wait() { f.wg.Wait() }

// add hands fd, a non-blocking socket whose client is subscribed to the
// live channel, to a shard, which owns it from then on.
func (f *floor) add(channel string, fd int) error {
	sh := f.shards[int(f.next.Add(1))%len(f.shards)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ev := syscall.EpollEvent{Events: floorIdle, Fd: int32(fd)}
	if err := syscall.EpollCtl(sh.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = syscall.Close(fd)
		return err
	}
	c := &floorConn{fd: fd}
	sh.byFD[fd] = c
	sh.topics[channel] = append(sh.topics[channel], c)
	return nil
}

// broadcast gives frame, encoded once, to every shard for the channel's
// connections; it waits while a shard is 1,024 frames behind, until ctx
// ends.
func (f *floor) broadcast(ctx context.Context, channel string, frame []byte) {
	for _, sh := range f.shards {
		select {
		case sh.frames <- floorFrame{channel, frame}:
		case <-ctx.Done():
			return
		}
	}
}

// write is the shard's writer: each frame to each of its channel's sockets.
func (sh *floorShard) write(ctx context.Context) {
	for {
		var fr floorFrame
		select {
		case <-ctx.Done():
			return
		case fr = <-sh.frames:
		}
		sh.mu.Lock()
		conns := sh.topics[fr.channel]
		kept := conns[:0]
		for _, c := range conns {
			if c.fd < 0 {
				continue
			}
			sh.sendLocked(c, fr.b)
			if c.fd >= 0 {
				kept = append(kept, c)
			}
		}
		clear(conns[len(kept):])
		sh.topics[fr.channel] = kept
		sh.mu.Unlock()
	}
}

// sendLocked writes frame to c without waiting: behind what is queued if
// anything is, else straight to the socket, queueing what it does not take.
func (sh *floorShard) sendLocked(c *floorConn, frame []byte) {
	if len(c.queue) > 0 {
		c.queue = append(c.queue, frame)
		return
	}
	n, err := nonblock(syscall.Write, c.fd, frame)
	if err != nil {
		sh.closeLocked(c)
		return
	}
	if n < len(frame) {
		c.queue = append(c.queue, frame[n:])
		sh.armLocked(c, true)
	}
}

// poll waits on the shard's epoll: a socket with room gets its queue, one
// whose client left is closed. It wakes every 100 ms to see ctx end.
func (sh *floorShard) poll(ctx context.Context) {
	defer syscall.Close(sh.epfd)
	events := make([]syscall.EpollEvent, 256)
	for ctx.Err() == nil {
		n, err := syscall.EpollWait(sh.epfd, events, 100)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		sh.mu.Lock()
		for _, ev := range events[:n] {
			c := sh.byFD[int(ev.Fd)]
			switch {
			case c == nil:
			case ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0:
				sh.closeLocked(c)
			case ev.Events&syscall.EPOLLOUT != 0:
				sh.flushLocked(c)
			}
		}
		sh.mu.Unlock()
	}
}

// flushLocked writes c's queue, up to 64 frames a writev, until the socket
// is full again (and stays armed) or the queue is empty (and is disarmed).
func (sh *floorShard) flushLocked(c *floorConn) {
	for len(c.queue) > 0 {
		n, err := writev(c.fd, c.queue)
		if err != nil {
			sh.closeLocked(c)
			return
		}
		if n == 0 {
			return // still full: stays armed
		}
		for n > 0 {
			if n < len(c.queue[0]) {
				c.queue[0] = c.queue[0][n:]
				break
			}
			n -= len(c.queue[0])
			c.queue[0] = nil
			c.queue = c.queue[1:]
		}
	}
	c.queue = nil
	sh.armLocked(c, false)
}

// armLocked sets whether c waits for EPOLLOUT.
func (sh *floorShard) armLocked(c *floorConn, out bool) {
	if c.armed == out {
		return
	}
	ev := syscall.EpollEvent{Events: floorIdle, Fd: int32(c.fd)}
	if out {
		ev.Events = floorFull
	}
	if err := syscall.EpollCtl(sh.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		sh.closeLocked(c)
		return
	}
	c.armed = out
}

// closeLocked closes c's socket (which leaves the epoll set with it); the
// writer drops c from its channel on its next frame.
func (sh *floorShard) closeLocked(c *floorConn) {
	if c.fd < 0 {
		return
	}
	delete(sh.byFD, c.fd)
	_ = syscall.Close(c.fd)
	c.fd, c.queue = -1, nil
}

// nonblock runs a read or write on a non-blocking socket, retried when a
// signal interrupts it; a full socket is n == 0 and no error.
func nonblock(op func(int, []byte) (int, error), fd int, b []byte) (int, error) {
	for {
		n, err := op(fd, b)
		switch err {
		case nil:
			return n, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, nil
		}
		return 0, err
	}
}

// writev writes up to 64 of frames with one call; n == 0 and no error when
// the socket is full.
func writev(fd int, frames [][]byte) (int, error) {
	var iov [64]syscall.Iovec
	k := 0
	for _, b := range frames {
		if k == len(iov) {
			break
		}
		if len(b) > 0 {
			iov[k].Base = &b[0]
			iov[k].SetLen(len(b))
			k++
		}
	}
	for {
		n, _, e := syscall.Syscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(k))
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, nil
		}
		return 0, e
	}
}
