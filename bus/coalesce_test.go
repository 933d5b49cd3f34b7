package bus

import (
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/wsbus/wsbus/ws"
)

// TestCoalescerSharesOnlyLaterReads: requests arriving while a read runs
// share the next read, one for all of them, and never get the answer of a
// read that had started before they asked.
func TestCoalescerSharesOnlyLaterReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		co := newCoalescer()
		key := readKey{topic: "t", since: "1-0"}
		var started atomic.Int64
		release := make(chan struct{})
		var second []string // the subjects the second read was asked for
		read := func(subjects []string) history {
			n := started.Add(1)
			if n == 2 {
				second = subjects
			}
			if n == 1 {
				<-release // the first read runs while the others arrive
			}
			return history{frames: make([]ws.Frame, n)} // len(frames) tells which read answered
		}
		first := make(chan history)
		go func() { first <- co.do(key, "first", read) }()
		synctest.Wait() // the first read has started and waits for release
		const n = 50
		var wg sync.WaitGroup
		answers := make([]int, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				before := int(started.Load())
				subject := ""
				if i%2 == 0 {
					subject = "s" + strconv.Itoa(i%6)
				}
				got := len(co.do(key, subject, read).frames)
				if got <= before {
					t.Errorf("answered by read %d, which started before the request (reads started: %d)", got, before)
				}
				answers[i] = got
			}()
		}
		synctest.Wait() // they all queue behind the first read
		close(release)
		if h := <-first; len(h.frames) != 1 {
			t.Fatalf("first request answered by read %d, want 1", len(h.frames))
		}
		wg.Wait()
		if s := started.Load(); s != 2 {
			t.Fatalf("%d reads for %d requests queued behind one, want 2", s, n)
		}
		for i, a := range answers {
			if a != 2 {
				t.Fatalf("request %d answered by read %d, want 2", i, a)
			}
		}
		slices.Sort(second)
		if want := []string{"s0", "s2", "s4"}; !slices.Equal(second, want) {
			t.Fatalf("the shared read was asked for subjects %q, want each joiner's once: %q", second, want)
		}
		// Other keys are never shared.
		if h := co.do(readKey{topic: "u", since: "1-0"}, "", read); len(h.frames) != 3 {
			t.Fatalf("another topic answered by read %d, want a read of its own (3)", len(h.frames))
		}
	})
}
