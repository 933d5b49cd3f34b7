package ws

import (
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
}

func newPool(max int, idle time.Duration) *pool {
	return &pool{
		handoff: make(chan task),
		backlog: make(chan task, 64*max),
		sem:     make(chan struct{}, max),
		idle:    idle,
	}
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
		go p.worker(task)
		return
	default:
	}
	select {
	case p.backlog <- task:
	default:
		p.overflow.Add(1)
		go task.run()
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
		case <-timer.C:
			<-p.sem
			// A task may have reached the backlog while this worker was
			// leaving; take it over if no other worker can.
			if len(p.backlog) == 0 {
				return
			}
			select {
			case p.sem <- struct{}{}:
				task = <-p.backlog
			default:
				return
			}
		}
	}
}
