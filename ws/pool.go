package ws

import (
	"sync"
	"sync/atomic"
	"time"
)

// pool runs tasks on at most max goroutines, like the gopool of "A Million
// WebSockets and Go". Workers exit after idleTimeout without work, so an
// idle server has none.
type pool struct {
	handoff chan task     // unbuffered: taken only by a waiting worker
	backlog chan task     // buffered: drained by busy workers when they finish
	sem     chan struct{} // one token per running worker
	idle    time.Duration

	overflow atomic.Uint64 // tasks that found every worker busy and the backlog full

	mu      sync.RWMutex   // read-locked to start a goroutine, locked by close
	closed  bool           // guarded by mu
	running sync.WaitGroup // workers and overflow goroutines started before close
	quit    chan struct{}  // closed by close: idle workers leave at once
}

func newPool(max int, idle time.Duration) *pool {
	return &pool{
		handoff: make(chan task),
		backlog: make(chan task, 64*max),
		sem:     make(chan struct{}, max),
		idle:    idle,
		quit:    make(chan struct{}),
	}
}

// close makes idle workers leave and waits for every goroutine the pool
// started, once they have run what they hold and what waits in the
// backlog. A task scheduled after close runs on a goroutine of its own,
// not waited for: the server that closes its pool has no connection left.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.quit)
	p.running.Wait()
}

// start runs fn on a new goroutine, counted unless the pool is closed.
func (p *pool) start(fn func()) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		go fn()
		return
	}
	p.running.Add(1)
	go func() {
		defer p.running.Done()
		fn()
	}()
}

// task is a connection's read, write, close or overflow, or any function: a
// connection's tasks are values, not closures bound to it, so an idle
// connection holds none and scheduling one allocates nothing.
type task struct {
	c  *Conn
	op taskOp
	fn func() // when c is nil
}

type taskOp uint8

const (
	taskRead taskOp = iota
	taskWrite
	taskClose
	taskOverflow
)

func (t task) run() {
	if t.c == nil {
		t.fn()
		return
	}
	switch t.op {
	case taskRead:
		t.c.read()
	case taskWrite:
		t.c.write()
	case taskClose:
		t.c.closeNow()
	case taskOverflow:
		t.c.overflowed()
	}
}

// schedule runs task on a worker without blocking the caller: an idle
// worker takes it, or a new one up to max, or the backlog holds it for the
// next free worker. When even the backlog is full it gets a goroutine of its
// own (counted in overflow): callers hold locks while they queue frames, so
// running the task inline could deadlock, and blocking would stall the epoll
// loop. Each connection has at most one read and one write task outstanding,
// which bounds the overflow.
func (p *pool) schedule(task task) {
	select {
	case p.handoff <- task:
		return
	default:
	}
	select {
	case p.sem <- struct{}{}:
		p.start(func() { p.worker(task) })
		return
	default:
	}
	select {
	case p.backlog <- task:
	default:
		p.overflow.Add(1)
		p.start(task.run)
	}
}

func (p *pool) worker(task task) {
	timer := time.NewTimer(p.idle)
	defer timer.Stop()
	for {
		task.run()
		timer.Reset(p.idle)
		select {
		case task = <-p.handoff:
		case task = <-p.backlog:
		case <-p.quit:
			select {
			case task = <-p.backlog:
				continue
			default:
				<-p.sem
				return
			}
		case <-timer.C:
			<-p.sem
			// A task may have reached the backlog while this worker was
			// leaving; take it over if no other worker can.
			if len(p.backlog) == 0 {
				return
			}
			select {
			case p.sem <- struct{}{}:
			default:
				return
			}
			select {
			case task = <-p.backlog:
			default: // another worker took it
				<-p.sem
				return
			}
		}
	}
}
