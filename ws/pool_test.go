package ws

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolNeverBlocksOrRunsInline saturates a tiny pool from inside its own
// tasks: every task runs, none on the scheduling goroutine.
func TestPoolNeverBlocksOrRunsInline(t *testing.T) {
	p := newPool(2, 50*time.Millisecond)
	release := make(chan struct{})
	var ran atomic.Int64
	var wg sync.WaitGroup
	const tasks = 2 + 2*64 + 10 // workers, backlog, overflow
	for range tasks {
		wg.Add(1)
		scheduled := make(chan struct{})
		inline := true
		p.schedule(task{fn: func() {
			defer wg.Done()
			<-scheduled
			if inline {
				t.Error("task ran on the caller's goroutine")
			}
			<-release
			ran.Add(1)
		}})
		inline = false
		close(scheduled)
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

// TestPoolWorkersExitWhenIdle: an idle pool keeps no goroutine.
func TestPoolWorkersExitWhenIdle(t *testing.T) {
	p := newPool(4, 20*time.Millisecond)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		p.schedule(task{fn: wg.Done})
	}
	wg.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for len(p.sem) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still running after the idle timeout", len(p.sem))
		}
		time.Sleep(5 * time.Millisecond)
	}
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
