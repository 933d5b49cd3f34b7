package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// The resume unit tests drive the steps of resume.go's argument
// (subscribe, go live, fan-out, catch-up) against a history in memory and
// a pub/sub connection the test plays, in a synctest bubble: no Redis, no
// sleeps, and each interleaving is chosen rather than hoped for.

// fakeHistory is one partition's history in memory: what lua/apply.lua
// writes, read through historyReader. Nothing is trimmed but by trim. A
// read can be held at a gate (hold).
type fakeHistory struct {
	mu     sync.Mutex
	epoch  string
	events map[string][]streams.Event
	ms     uint64                   // the newest ID's milliseconds: IDs grow across epochs too
	gates  map[string]chan struct{} // by op and point (see hold)
	reads  map[string]int           // reads done, by op
	pages  int                      // when above 0, the page reads past it fail: a reader that does not progress fails its test rather than hang it
}

var _ historyReader = (*fakeHistory)(nil)

func newFakeHistory() *fakeHistory {
	return &fakeHistory{epoch: "e1", events: map[string][]streams.Event{}, gates: map[string]chan struct{}{}, reads: map[string]int{}}
}

// write appends an event to topic's history, the next of its sequence.
func (f *fakeHistory) write(topic string) streams.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ms++
	seq := uint64(len(f.events[topic]) + 1)
	e := streams.Event{ID: strconv.FormatUint(f.ms, 10) + "-0", Seq: seq, Data: `"x"`}
	f.events[topic] = append(f.events[topic], e)
	return e
}

// trim removes topic's n oldest events, as XTRIM does.
func (f *fakeHistory) trim(topic string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events[topic] = f.events[topic][n:]
}

// loseData is Redis losing every partition's data (a restart without
// persistence): the owner finds it and renews the epoch.
func (f *fakeHistory) loseData(epoch string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.epoch = epoch
	clear(f.events)
}

// hold makes the reads of op ("Resume", "Range" for Range and ReadPage, or
// "Head") wait at point
// until release is called: "before" they look at history, or "after".
func (f *fakeHistory) hold(op, point string) (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	gate := make(chan struct{})
	f.gates[op+" "+point] = gate
	return func() {
		f.mu.Lock()
		delete(f.gates, op+" "+point)
		f.mu.Unlock()
		close(gate)
	}
}

func (f *fakeHistory) pass(op, point string) {
	f.mu.Lock()
	gate := f.gates[op+" "+point]
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
}

// read runs a read of op at the gates, under f.mu.
func (f *fakeHistory) read(op string, fn func()) {
	f.pass(op, "before")
	f.mu.Lock()
	f.reads[op]++
	fn()
	f.mu.Unlock()
	f.pass(op, "after")
}

func (f *fakeHistory) readCount(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads[op]
}

// afterLocked returns up to n events of topic after the ID after.
func (f *fakeHistory) afterLocked(topic string, after streams.ID, n int) []streams.Event {
	var out []streams.Event
	for _, e := range f.events[topic] {
		if after.Less(streams.MustParseID(e.ID)) && len(out) < n {
			out = append(out, e)
		}
	}
	return out
}

func (f *fakeHistory) headLocked(topic string) streams.Head {
	h := streams.Head{Epoch: f.epoch}
	if es := f.events[topic]; len(es) > 0 {
		h.ID, h.Seq = streams.MustParseID(es[len(es)-1].ID), es[len(es)-1].Seq
	}
	return h
}

func (f *fakeHistory) Head(_ context.Context, topic string, _ ...string) (h streams.Head, err error) {
	f.read("Head", func() { h = f.headLocked(topic) })
	return h, nil
}

// Resume answers as streams.History does when nothing was trimmed: a
// cursor of this epoch at or below the head is recovered; any other gets
// everything retained.
func (f *fakeHistory) Resume(_ context.Context, topic string, c streams.Cursor, page streams.Page, _ ...string) (r streams.Resume, err error) {
	after, err := streams.ParseID(c.Since)
	if err != nil {
		return r, err
	}
	f.read("Resume", func() {
		head := f.headLocked(topic)
		r.Epoch, r.Head, r.HeadSeq = head.Epoch, head.ID, head.Seq
		r.Recovered = (c.Epoch == "" || c.Epoch == f.epoch) && !head.ID.Less(after)
		if !r.Recovered {
			after = streams.ID{}
		}
		r.Events, r.More = f.pageLocked(topic, after, page)
	})
	return r, nil
}

// pageLocked returns a page of topic after the ID after, as page.lua (or,
// without Bytes, XRANGE) does: more when it ended at a bound.
func (f *fakeHistory) pageLocked(topic string, after streams.ID, p streams.Page) (events []streams.Event, more bool) {
	room := p.Bytes
	for _, e := range f.afterLocked(topic, after, p.Events) {
		if p.Bytes > 0 && len(e.Data) > room && len(events) > 0 {
			return events, true
		}
		room -= len(e.Data)
		events = append(events, e)
	}
	return events, len(events) == p.Events
}

func (f *fakeHistory) ReadPage(_ context.Context, topic string, after streams.ID, p streams.Page) (events []streams.Event, more bool, err error) {
	f.read("Range", func() {
		if f.pages > 0 && f.reads["Range"] > f.pages {
			err = errors.New("fake history: too many page reads")
			return
		}
		events, more = f.pageLocked(topic, after, p)
	})
	return events, more, err
}

func (f *fakeHistory) Range(_ context.Context, topic string, after streams.ID, count int) (events []streams.Event, err error) {
	f.read("Range", func() { events = f.afterLocked(topic, after, count) })
	return events, nil
}

func (f *fakeHistory) Epochs(context.Context) (epochs []string, err error) {
	f.read("Epochs", func() { epochs = []string{f.epoch} })
	return epochs, nil
}

func (f *fakeHistory) Acked(context.Context, string, string) (streams.Acked, error) {
	return streams.Acked{}, nil
}

// fakeConn is a client's connection that keeps the messages it is sent.
type fakeConn struct {
	mu     sync.Mutex
	frames []ws.Frame
	closed uint16 // the close code; 0 while open
}

var _ clientConn = (*fakeConn)(nil)

func (c *fakeConn) Send(frame ws.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != 0 {
		return ws.ErrClosed
	}
	c.frames = append(c.frames, frame)
	return nil
}

func (c *fakeConn) SendWait(frame ws.Frame) error                   { return c.Send(frame) }
func (c *fakeConn) SendWaitIf(frame ws.Frame, ok func() bool) error { return c.Send(frame) }
func (c *fakeConn) Offer(frame ws.Frame) error                      { return c.Send(frame) }
func (c *fakeConn) Recover(func(dropped []ws.Frame)) bool           { return false }

func (c *fakeConn) Close(code uint16, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == 0 {
		c.closed = code
	}
}

// messages decodes what c was sent.
func (c *fakeConn) messages(tb testing.TB) []ServerMessage {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	msgs := make([]ServerMessage, len(c.frames))
	for i, f := range c.frames {
		if err := json.Unmarshal(f.Payload(), &msgs[i]); err != nil {
			tb.Fatalf("frame %d: %v", i, err)
		}
	}
	return msgs
}

// wantEvents checks that c was sent subscribed, then exactly want, in
// order, and was closed with code (0: not closed); it returns subscribed.
func (c *fakeConn) wantEvents(tb testing.TB, code uint16, want ...streams.Event) ServerMessage {
	tb.Helper()
	msgs := c.messages(tb)
	if len(msgs) == 0 || msgs[0].Type != "subscribed" {
		tb.Fatalf("messages %+v: want subscribed first", msgs)
	}
	var got, wanted []string
	for _, m := range msgs[1:] {
		got = append(got, fmt.Sprintf("%s/%d", m.ID, m.Seq))
	}
	for _, e := range want {
		wanted = append(wanted, fmt.Sprintf("%s/%d", e.ID, e.Seq))
	}
	if fmt.Sprint(got) != fmt.Sprint(wanted) {
		tb.Errorf("events %v, want %v", got, wanted)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed != code {
		tb.Errorf("closed with %d, want %d", closed, code)
	}
	return msgs[0]
}

// resumeBus is a Gateway on a fakeHistory, with one pub/sub connection
// whose run goroutine the test plays (lose, subscribeChannel, confirm)
// and whose reader is a goroutine that fans out what publish sends it.
type resumeBus struct {
	g    *Gateway
	lc   *liveConn
	hist *fakeHistory
	live chan [2]string // channel and payload, as Redis sends them

	inRedis map[string]bool // topics whose channel Redis has on the current connection; the test's goroutine only
}

func newResumeBus(tb testing.TB) *resumeBus {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &resumeBus{hist: newFakeHistory(), live: make(chan [2]string, 64), inRedis: map[string]bool{}}
	b.g = &Gateway{
		cfg: GatewayConfig{
			Keys: streams.Keys{Prefix: "resume"}, Partitions: 1, MaxSubscriptions: 8,
			HistoryPage: 2, MaxPending: 100, ReadyTimeout: time.Second,
			Logger: slog.New(slog.DiscardHandler),
		},
		hist: b.hist, reads: newCoalescer(), ctx: ctx, cancel: cancel,
		topics: map[string]*topic{}, parts: make([]*liveConn, 1),
		epochs: make([]string, 1), epochRecheck: make([]bool, 1),
	}
	b.lc = newLiveConn(b.g)
	b.g.parts[0] = b.lc
	b.g.wg.Add(2)
	go func() {
		defer b.g.wg.Done()
		b.lc.catchUps()
	}()
	go func() {
		defer b.g.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-b.live:
				b.g.fanOut(m[0], m[1])
			}
		}
	}()
	tb.Cleanup(func() { _ = b.g.Close() })
	return b
}

// publish is the owner applying one event: written to history, then
// published on the live channel, which only a connection Redis has
// subscribed to it receives.
func (b *resumeBus) publish(name string) streams.Event {
	e := b.hist.write(name)
	if b.inRedis[name] {
		b.live <- [2]string{b.g.channel(name), string(streams.AppendEvent(nil, name, e.ID, e.Seq, []byte(e.Data)))}
	}
	return e
}

// subscribeChannel is Redis subscribing the connection to name's channel:
// what is published from now on reaches it.
func (b *resumeBus) subscribeChannel(name string) { b.inRedis[name] = true }

// confirm is the connection's goroutine taking Redis's confirmation.
func (b *resumeBus) confirm(tb testing.TB, name string) {
	tb.Helper()
	b.g.mu.Lock()
	b.lc.advanceLocked(name, b.lc.askedLocked(name), subscribing)
	b.g.mu.Unlock()
	if err := b.lc.confirmed(&redis.Subscription{Kind: "ssubscribe", Channel: b.g.channel(name)}); err != nil {
		tb.Fatal(err)
	}
}

// ready refers to topic name and subscribes its live channel.
func (b *resumeBus) ready(tb testing.TB, name string) *topic {
	tb.Helper()
	t := b.g.refTopic(name)
	b.subscribeChannel(name)
	b.confirm(tb, name)
	return t
}

// lose is the connection lost, once its reader has fanned out what it
// read, and a new one dialled: nothing is subscribed on it yet.
func (b *resumeBus) lose() {
	synctest.Wait()
	b.lc.lose(errors.New("connection reset"))
	b.lc.forgetAsked()
	clear(b.inRedis)
}

// subscribe starts a client's subscription to name, resuming after the
// event from (or from the head, when from is nil); done is closed when
// subscribe has returned.
func (b *resumeBus) subscribe(name string, from *streams.Event, epoch string) (c *fakeConn, done <-chan struct{}) {
	c = &fakeConn{}
	m := clientMessage{Type: "subscribe", Topic: name, Epoch: epoch}
	if from != nil {
		m.Since, m.Seq = &from.ID, []byte(strconv.FormatUint(from.Seq, 10))
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		b.g.subscribe(c, newClient(c), m)
	}()
	return c, ch
}

// returned checks that done is closed.
func returned(tb testing.TB, done <-chan struct{}) {
	tb.Helper()
	synctest.Wait()
	select {
	case <-done:
	default:
		tb.Fatal("subscribe has not returned")
	}
}

// held reports whether t holds its live events for a catch-up.
func held(t *topic) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.catching
}

// TestResumeEventDuringHistoryRead: an event written while a resume reads
// history reaches the subscriber once, whether the read has it or not,
// and whether its live copy comes before or after the subscriber went
// live.
func TestResumeEventDuringHistoryRead(t *testing.T) {
	for _, tt := range []struct {
		name     string
		point    string // where the read is when the event is written
		liveLate bool   // the live copy is fanned out after subscribe returned
	}{
		{"written before the read looks", "before", false},
		{"written after the read looked", "after", false},
		{"read, and live only after go-live", "before", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newResumeBus(t)
				b.ready(t, "a")
				e1, e2 := b.publish("a"), b.publish("a")
				release := b.hist.hold("Resume", tt.point)
				c, done := b.subscribe("a", &e1, "e1")
				synctest.Wait() // the read waits at its gate
				var e3 streams.Event
				if tt.liveLate {
					e3 = b.hist.write("a") // its live copy is sent below
				} else {
					e3 = b.publish("a")
				}
				synctest.Wait() // fan-out has it: pending, as the subscription is not live
				release()
				returned(t, done)
				if tt.liveLate {
					b.live <- [2]string{b.g.channel("a"), string(streams.AppendEvent(nil, "a", e3.ID, e3.Seq, []byte(e3.Data)))}
				}
				e4 := b.publish("a")
				synctest.Wait()
				if sub := c.wantEvents(t, 0, e2, e3, e4); !sub.Recovered {
					t.Errorf("subscribed %+v: want recovered", sub)
				}
			})
		})
	}
}

// TestResumePagesCutByBytes: a resume whose history pages end at
// HistoryBytes, short of HistoryPage events, reads on until history says
// there is no more, and the subscriber gets every event once, in order;
// so do events larger than HistoryBytes (written under a greater MaxData),
// which come a page each.
func TestResumePagesCutByBytes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		bytes int // HistoryBytes, for events of 3 bytes
		pages int // pages read after the first (Resume)
	}{
		// One event a page; the last page says there is no more.
		{"one event a page", 5, 3},
		// Each page's read finds the event after the last one sent too
		// large and reads it again in a page of two; the last finds none.
		{"events past the bytes", 2, 7},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newResumeBus(t)
				b.g.cfg.HistoryPage, b.g.cfg.HistoryBytes = 500, tt.bytes
				b.hist.pages = 20 // a reader that does not progress fails rather than hangs
				b.ready(t, "a")
				e1 := b.publish("a")
				var want []streams.Event
				for range 4 {
					want = append(want, b.publish("a"))
				}
				c, done := b.subscribe("a", &e1, "e1")
				returned(t, done)
				if sub := c.wantEvents(t, 0, want...); !sub.Recovered {
					t.Errorf("subscribed %+v: want recovered", sub)
				}
				if n := b.hist.readCount("Range"); n != tt.pages {
					t.Errorf("%d pages read after the first, want %d", n, tt.pages)
				}
			})
		})
	}
}

// TestResumeTrimmedBetweenPages: history is trimmed while a resume reads
// its pages. Trimmed up to the last event sent, the client goes on from it
// and gets the rest; trimmed past it, the client is closed with 4001 after
// what it was sent (its resume then learns what it missed), never sent the
// events after the hole as if they followed.
func TestResumeTrimmedBetweenPages(t *testing.T) {
	for _, tt := range []struct {
		name    string
		trimmed int // oldest events trimmed between the first page and the second
		sent    int // events after the cursor the client gets
		code    uint16
	}{
		{"up to the last event sent", 2, 6, 0},
		{"past the last event sent", 3, 2, ws.CloseSlowConsumer},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newResumeBus(t)
				b.g.cfg.HistoryPage = 2
				b.ready(t, "a")
				e1 := b.publish("a")
				var written []streams.Event
				for range 6 {
					written = append(written, b.publish("a"))
				}
				release := b.hist.hold("Range", "before")
				c, done := b.subscribe("a", &e1, "e1")
				synctest.Wait() // the first page (Resume) is sent: written[:2]
				b.hist.trim("a", tt.trimmed)
				release()
				returned(t, done)
				if sub := c.wantEvents(t, tt.code, written[:tt.sent]...); !sub.Recovered {
					t.Errorf("subscribed %+v: want recovered", sub)
				}
			})
		})
	}
}

// TestCatchUpPagesCutByBytes: a topic caught up from history after its
// pub/sub connection was lost reads pages cut short by HistoryBytes until
// history says there is no more, and its subscriber gets every event it
// missed once, in order, without being closed.
func TestCatchUpPagesCutByBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newResumeBus(t)
		b.g.cfg.HistoryPage, b.g.cfg.HistoryBytes = 500, 5 // events of 3 bytes: one a page
		tp := b.ready(t, "a")
		c, done := b.subscribe("a", nil, "")
		returned(t, done)
		written := []streams.Event{b.publish("a")}
		synctest.Wait()
		b.lose()
		for range 4 {
			written = append(written, b.publish("a")) // on no connection: history only
		}
		b.subscribeChannel("a")
		b.confirm(t, "a")
		synctest.Wait()
		if held(tp) {
			t.Fatal("the topic still holds its live events after its catch-up")
		}
		c.wantEvents(t, 0, written...)
		if n := b.hist.readCount("Range"); n != 4 {
			t.Errorf("%d history pages read, want 4: one an event, the last saying there is no more", n)
		}
	})
}

// TestResumeConnectionLostDuringResume: the pub/sub connection is lost
// while a client resumes. The events published while it was down come
// from history, once, to the resuming client and to one already live; the
// topic is caught up only once its channel is confirmed on the new
// connection; and a catch-up that began before another loss does not end
// the topic's hold: the one after the next confirmation does.
func TestResumeConnectionLostDuringResume(t *testing.T) {
	for _, tt := range []struct {
		name         string
		confirmFirst bool // the channel is confirmed before the resume's read returns
		lostAgain    bool // the new connection is lost too, while its catch-up reads history
	}{
		{"confirmed before the read returns", true, false},
		{"confirmed after go-live", false, false},
		{"lost again during the catch-up", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newResumeBus(t)
				b.g.cfg.HistoryPage = 10 // a catch-up reads one page: only the hold keeps it from missing what follows
				tp := b.ready(t, "a")
				early, done := b.subscribe("a", nil, "")
				returned(t, done)
				e1, e2 := b.publish("a"), b.publish("a")
				release := b.hist.hold("Resume", "before")
				c, done := b.subscribe("a", &e1, "e1")
				synctest.Wait()

				b.lose()
				b.g.queueCatchUp(tp) // as a subscriber told a new epoch asks: the catch-up must not end the hold yet
				e3 := b.publish("a") // on no connection: history only
				b.subscribeChannel("a")
				e4 := b.publish("a") // live, on the new connection, before its confirmation
				synctest.Wait()
				if !held(tp) {
					t.Fatal("the topic does not hold its live events after its connection was lost")
				}
				if n := b.g.Stats().CatchUps; n != 0 {
					t.Fatalf("%d catch-ups before the channel was confirmed", n)
				}
				written := []streams.Event{e1, e2, e3, e4}
				if !tt.confirmFirst {
					release()
					returned(t, done)
				}
				var releaseRange func()
				if tt.lostAgain {
					releaseRange = b.hist.hold("Range", "after")
				}
				b.confirm(t, "a")
				synctest.Wait()
				if tt.lostAgain { // the catch-up has read history up to e4
					b.lose()
					written = append(written, b.publish("a"))
					b.subscribeChannel("a")
					b.confirm(t, "a")
					releaseRange()
				}
				synctest.Wait()
				if held(tp) {
					t.Fatal("the topic still holds its live events after its catch-up")
				}
				early.wantEvents(t, 0, written...)
				if tt.confirmFirst {
					release()
					returned(t, done)
				}
				written = append(written, b.publish("a"))
				synctest.Wait()
				early.wantEvents(t, 0, written...)
				c.wantEvents(t, 0, written[1:]...)
			})
		})
	}
}

// TestEpochsRead: the gateway's reads of the epochs close no one while
// the epoch stays; a subscribe whose read raced a renewal the reads saw
// first is closed with 4001 at the read after; and one that read the new
// epoch before the reads did is neither closed nor caught up.
func TestEpochsRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newResumeBus(t)
		b.ready(t, "a")
		c, done := b.subscribe("a", nil, "")
		returned(t, done)
		e1 := b.publish("a")
		b.g.checkEpochs() // the first read: every partition's epoch is new to it
		b.g.checkEpochs()
		synctest.Wait()
		e2 := b.publish("a")
		synctest.Wait()
		c.wantEvents(t, 0, e1, e2)
		if n := b.hist.readCount("Epochs"); n != 2 {
			t.Errorf("%d reads of the epochs, want 2", n)
		}

		// A subscribe reads under e1; the owner renews the epoch and the
		// gateway reads it before the subscribe has told its topic.
		b.ready(t, "b")
		release := b.hist.hold("Head", "after")
		late, done := b.subscribe("b", nil, "")
		synctest.Wait()
		b.hist.mu.Lock()
		b.hist.epoch = "e2"
		b.hist.mu.Unlock()
		b.g.checkEpochs()
		release()
		returned(t, done)
		synctest.Wait()
		late.wantEvents(t, 0) // not yet: the next read judges it
		b.g.checkEpochs()
		synctest.Wait()
		late.wantEvents(t, ws.CloseSlowConsumer)

	})
}

// TestEpochsReadAfterASubscribe: a subscribe that read a renewed epoch
// before the gateway's reads did is neither closed nor caught up from
// history when they do.
func TestEpochsReadAfterASubscribe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newResumeBus(t)
		b.ready(t, "a")
		for range 5 {
			b.publish("a")
		}
		b.g.checkEpochs() // reads e1
		b.hist.mu.Lock()
		b.hist.epoch = "e2"
		b.hist.mu.Unlock()
		c, done := b.subscribe("a", nil, "")
		returned(t, done)
		b.g.checkEpochs()
		synctest.Wait()
		c.wantEvents(t, 0)
		if n := b.hist.readCount("Range"); n != 0 {
			t.Errorf("%d history pages read for a topic served under the current epoch, want 0", n)
		}
		if n := b.hist.readCount("Epochs"); n != 2 {
			t.Errorf("%d reads of the epochs, want 2", n)
		}
	})
}

// TestResumeTwoAtOnce: resumes of one topic at the same time, from the
// same cursor and from another, each get their events once; a resume
// shares a read only with one that began after it asked.
func TestResumeTwoAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newResumeBus(t)
		b.ready(t, "a")
		e1, e2, e3 := b.publish("a"), b.publish("a"), b.publish("a")
		release := b.hist.hold("Resume", "before")
		first, firstDone := b.subscribe("a", &e1, "e1")
		synctest.Wait() // its read waits at the gate
		second, secondDone := b.subscribe("a", &e1, "e1")
		synctest.Wait() // waits for a read after the first one
		third, thirdDone := b.subscribe("a", &e1, "e1")
		other, otherDone := b.subscribe("a", &e2, "e1")
		synctest.Wait()
		e4 := b.publish("a")
		synctest.Wait()
		release()
		for _, done := range []<-chan struct{}{firstDone, secondDone, thirdDone, otherDone} {
			returned(t, done)
		}
		e5 := b.publish("a")
		synctest.Wait()
		first.wantEvents(t, 0, e2, e3, e4, e5)
		second.wantEvents(t, 0, e2, e3, e4, e5)
		third.wantEvents(t, 0, e2, e3, e4, e5)
		other.wantEvents(t, 0, e3, e4, e5)
		// The first's read, the second's (shared with the third), the other's.
		if n := b.hist.readCount("Resume"); n != 3 {
			t.Errorf("%d resume reads, want 3", n)
		}
	})
}

// TestResumeEpochChange: Redis lost data and the owner renewed the
// epoch. The topic's subscribers are closed with 4001, however the gateway
// learns it; a resume under the new epoch is answered recovered:false
// and sent what history now holds, once.
func TestResumeEpochChange(t *testing.T) {
	for _, tt := range []struct {
		name string
		how  string // the gateway learns it from a live event of the new epoch, a subscribe, or its read of the epochs
	}{
		{"a live event out of sequence", "live"},
		{"a subscribe told the new epoch", "subscribe"},
		{"the epochs read", "watch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newResumeBus(t)
				b.ready(t, "a")
				old, oldDone := b.subscribe("a", nil, "")
				returned(t, oldDone)
				e1, e2 := b.publish("a"), b.publish("a")
				synctest.Wait()

				b.hist.loseData("e2")
				var f1 streams.Event
				switch tt.how {
				case "live":
					f1 = b.publish("a") // seq 1 after 2: fan-out holds it for a catch-up
				case "subscribe":
					f1 = b.hist.write("a") // its live copy lost
					_, done := b.subscribe("a", nil, "")
					returned(t, done)
				case "watch":
					f1 = b.hist.write("a") // its live copy lost
					b.g.checkEpochs()
				}
				synctest.Wait()
				old.wantEvents(t, ws.CloseSlowConsumer, e1, e2)
				if n := b.g.Stats().Resets; n != 1 {
					t.Errorf("%d resets, want 1", n)
				}

				resumed, done := b.subscribe("a", &e2, "e1")
				returned(t, done)
				f2 := b.publish("a")
				synctest.Wait()
				sub := resumed.wantEvents(t, 0, f1, f2)
				if sub.Recovered || sub.Epoch != "e2" {
					t.Errorf("subscribed %+v: want recovered:false under epoch e2", sub)
				}
			})
		})
	}
}
