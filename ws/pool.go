package ws

import "time"

// pool runs tasks on at most max goroutines, like the gopool of "A Million
// WebSockets and Go". Workers exit after idleTimeout without work, so an
// idle server has none.
type pool struct {
	handoff chan func()   // unbuffered: taken only by a waiting worker
	backlog chan func()   // buffered: drained by busy workers when they finish
	sem     chan struct{} // one token per running worker
	idle    time.Duration
}

func newPool(max int, idle time.Duration) *pool {
	return &pool{
		handoff: make(chan func()),
		backlog: make(chan func(), 64*max),
		sem:     make(chan struct{}, max),
		idle:    idle,
	}
}

// Schedule runs task on a worker. When every worker is busy and the backlog
// is full, it runs task on the caller: back-pressure instead of unbounded
// queueing, and never a deadlock when a worker schedules.
func (p *pool) Schedule(task func()) {
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
		task()
	}
}

func (p *pool) worker(task func()) {
	timer := time.NewTimer(p.idle)
	defer timer.Stop()
	for {
		task()
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
