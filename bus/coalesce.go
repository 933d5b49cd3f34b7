package bus

import (
	"slices"
	"sync"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// When thousands of clients reconnect at once they mostly resume the same
// topics from the same cursor. Their history reads are coalesced: at most
// one read per (topic, cursor, epoch) is in flight, and every request that
// arrives meanwhile waits for the next read, which then serves them all. A
// request never joins a read that started before it, so a subscriber's
// read always begins after its subscription to the live channel, which is
// what makes history + live gap-free (see resume.go). The answer is
// encoded once: every subscriber is sent the same frames.
//
// Subscribers with a subject are also told their acknowledged cursor. A
// read serves many subjects, so each one that joins a waiting read adds
// its subject to it, and the read, when it starts (no one joins it after
// that), reads every cursor in the same round trip as the history; each
// subscriber's "subscribed" is then its own.

// readKey identifies reads that can be shared.
type readKey struct {
	topic, since, epoch string
	seq                 uint64 // the seq of since, when hasSeq
	hasSeq              bool
	head                bool // Head (no cursor) rather than Resume
}

// history is one read's answer, ready to send.
type history struct {
	err        error
	subscribed ws.Frame                 // the "subscribed" frame, without acked and unread
	info       Subscribed               // what it says, for a subscriber's own frame with them
	acked      map[string]streams.Acked // cursors of the subjects the read was asked for
	frames     []ws.Frame               // event frames, oldest first
	ids        []streams.ID             // their IDs
	last       streams.ID               // the cursor the events follow: the head, the client's, or zero if untrusted
	recovered  bool
	more       bool // a full page: read on after the last event (readOn)
	lastSize   int  // the data size of the last event, for readOn
}

type flight struct {
	done     chan struct{}
	h        history
	subjects []string // guarded by coalescer.mu until the read starts
}

// join adds subject to the read's subjects.
func (f *flight) join(subject string) {
	if subject != "" && !slices.Contains(f.subjects, subject) {
		f.subjects = append(f.subjects, subject)
	}
}

// coalescer runs shared reads.
type coalescer struct {
	mu      sync.Mutex
	running map[readKey]*flight // started: too late to join
	waiting map[readKey]*flight // starts when the running one ends: join it
}

func newCoalescer() *coalescer {
	return &coalescer{running: map[readKey]*flight{}, waiting: map[readKey]*flight{}}
}

// do returns the answer of a read of key that started after do was called,
// with the cursor of subject ("" for none) among those read.
func (co *coalescer) do(key readKey, subject string, read func(subjects []string) history) history {
	co.mu.Lock()
	if f, ok := co.waiting[key]; ok {
		f.join(subject)
		co.mu.Unlock()
		<-f.done
		return f.h
	}
	f := &flight{done: make(chan struct{})}
	f.join(subject)
	if prev, busy := co.running[key]; busy {
		co.waiting[key] = f
		co.mu.Unlock()
		<-prev.done
		co.mu.Lock()
		delete(co.waiting, key)
	}
	co.running[key] = f
	subjects := f.subjects
	co.mu.Unlock()

	f.h = read(subjects)
	co.mu.Lock()
	if co.running[key] == f {
		delete(co.running, key)
	}
	co.mu.Unlock()
	close(f.done)
	return f.h
}
