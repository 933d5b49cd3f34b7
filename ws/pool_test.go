package ws

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestPoolNeverBlocksOrRunsInline saturates a tiny pool from inside its own
// tasks: every task runs, none on the scheduling goroutine.
func TestPoolNeverBlocksOrRunsInline(t *testing.T) {
	p := newPool(2, 50*time.Millisecond)
	caller := goroutineID()
	release := make(chan struct{})
	var ran atomic.Int64
	var wg sync.WaitGroup
	const tasks = 2 + 2*64 + 10 // workers, backlog, overflow
	for range tasks {
		wg.Add(1)
		p.schedule(task{fn: func() {
			defer wg.Done()
			if goroutineID() == caller {
				t.Error("task ran on the caller's goroutine")
				return // waiting for release here would hang the caller
			}
			<-release
			ran.Add(1)
		}})
	}
	close(release)
	wg.Wait()
	if ran.Load() != tasks {
		t.Fatalf("%d of %d tasks ran", ran.Load(), tasks)
	}
	if p.overflow.Load() == 0 {
		t.Fatal("no task overflowed a full pool")
	}
}

// goroutineID is the calling goroutine's number, from its stack header
// ("goroutine 18 [running]:").
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return id
}

// TestPoolWorkersExitWhenIdle: workers wait for work for the idle time,
// then exit, so an idle pool keeps no goroutine. The clock is synctest's.
func TestPoolWorkersExitWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 10 * time.Second
		p := newPool(4, idle)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			p.schedule(task{fn: wg.Done})
		}
		wg.Wait()
		time.Sleep(idle - time.Millisecond) // synctest's clock: no real wait
		synctest.Wait()
		if len(p.sem) == 0 {
			t.Fatal("every worker exited before the idle time")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := len(p.sem); n != 0 {
			t.Fatalf("%d workers still running after the idle time", n)
		}
	})
}

// TestPoolCloseWaitsForItsGoroutines: close makes busy workers finish what
// they hold and what waits in the backlog, and returns when every
// goroutine the pool started has ended, long before the idle timeout.
func TestPoolCloseWaitsForItsGoroutines(t *testing.T) {
	p := newPool(2, time.Hour)
	release := make(chan struct{})
	var ran atomic.Int64
	const tasks = 2 + 2*64 + 3 // workers, backlog, overflow
	for range tasks {
		p.schedule(task{fn: func() {
			<-release
			ran.Add(1)
		}})
	}
	closed := make(chan struct{})
	go func() {
		p.close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("close returned while tasks were running")
	default:
	}
	close(release)
	<-closed
	if n := ran.Load(); n != tasks {
		t.Fatalf("close returned after %d of %d tasks", n, tasks)
	}
	if n := len(p.sem); n != 0 {
		t.Fatalf("%d workers still counted after close", n)
	}
}
