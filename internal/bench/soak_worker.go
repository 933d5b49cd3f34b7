package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/streams"
)

// SoakJob makes a worker a soak client (see soak_check.go for what it
// checks): each connection holds one soak topic at a time, switches on
// "churn", and is dialed again with its cursor when the server closes it.
type SoakJob struct {
	Topics int `json:"topics"` // the soak's topics are soakTopic(0 .. Topics-1)
}

// SoakStats is a soak worker's part of a Report.
type SoakStats struct {
	Open         int    `json:"open"`          // connections up, subscribed, no switch in flight
	Away         int64  `json:"away"`          // connections the server closed, being dialed again
	Reconnects   uint64 `json:"reconnects"`    // dialed again and resumed
	GaveUp       uint64 `json:"gave_up"`       // not back within soakRedialFor: left closed
	Churned      uint64 `json:"churned"`       // topic switches sent
	Lost         uint64 `json:"lost"`          // events skipped over, so far
	Dups         uint64 `json:"duplicated"`    // events received again or out of order
	Bad          uint64 `json:"bad_seq"`       // events whose seq is not their publish number
	NotRecovered uint64 `json:"not_recovered"` // subscribed answered recovered:false
	Unexpected   uint64 `json:"unexpected"`    // events or answers for a topic not subscribed
	ServerErrors uint64 `json:"server_errors"` // {"type":"error"} answers
	// Notes are the first problems, with their time and gateway.
	Notes []string `json:"notes,omitempty"`
}

// SoakFinal is a soak worker's answer to "final": how far its
// connections are from the end of what was published.
type SoakFinal struct {
	Missing  uint64 `json:"missing"`   // events still due at subscriptions held
	NotReady int    `json:"not_ready"` // connections away, or with a switch unanswered
}

// Soak client tuning. The redial follows what the README asks of clients
// on 4002: at once, jittered, then exponential backoff with full jitter.
const (
	soakRedialJitter = 500 * time.Millisecond // the first redial waits up to this
	soakBackoffMin   = 100 * time.Millisecond
	soakBackoffMax   = 2 * time.Second
	// soakRedialFor bounds how long a connection is dialed again: a
	// restarted node is back within seconds, so a connection still away
	// after this is a failure, not patience.
	soakRedialFor = 2 * time.Minute
	soakDials     = 256 // redials in flight at once, as connectAll
	maxNotes      = 50
)

// soakConn is a soak connection's subscriptions, guarded by its wconn's
// mu. The connection subscribes to topic; span is that subscription once
// answered (kept across resumes); leaving is the topic just unsubscribed,
// whose events are still taken until its "unsubscribed".
type soakConn struct {
	topic   int
	span    *Span
	leaving *Span
	pending bool // a subscribe of topic sent on the open connection, not yet answered
	broken  bool // the server refused topic: the connection is to be dialed again
}

// soakWorker is the soak state of a worker.
type soakWorker struct {
	topics int
	quit   chan struct{} // closed when the worker quits: redials stop
	dials  chan struct{} // one token per redial in flight
	wg     sync.WaitGroup

	mu    sync.Mutex
	done  []Span   // spans ended by an unsubscribe or a close
	notes []string // the first problems, with their time, for the report

	away                          atomic.Int64
	reconnects, gaveUp, churned   atomic.Uint64
	lost, dups, bad, notRecovered atomic.Uint64
	unexpected, serverErrors      atomic.Uint64
}

func newSoakWorker(job *SoakJob) (*soakWorker, error) {
	if job.Topics < 2 {
		return nil, errors.New("bench worker: a soak needs at least 2 topics to switch between")
	}
	return &soakWorker{topics: job.Topics, quit: make(chan struct{}), dials: make(chan struct{}, soakDials)}, nil
}

// note keeps a problem for the report, with the time (to find it in the
// gateways' logs) and the worker's gateway.
func (s *soakWorker) note(url, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.notes) < maxNotes {
		s.notes = append(s.notes, time.Now().UTC().Format("15:04:05.000 ")+url+": "+fmt.Sprintf(format, args...))
	}
}

func (s *soakWorker) finish(sp *Span) {
	sp.Open = false
	s.mu.Lock()
	s.done = append(s.done, *sp)
	s.mu.Unlock()
}

// soakTopicIndex is the i of soakTopic(i), or false.
func soakTopicIndex(topic string) (int, bool) {
	var i int
	rest, ok := bytes.CutPrefix([]byte(topic), []byte(soakTopicPrefix))
	if !ok || len(rest) == 0 {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' || i > 1<<30 {
			return 0, false
		}
		i = i*10 + int(c-'0')
	}
	return i, soakTopic(i) == topic
}

// soakRecord handles a text message of a soak connection. It runs with
// wc.mu held.
func (w *worker) soakRecord(wc *wconn, p []byte, now int64) {
	if e, ok := parseSoakEvent(p); ok {
		w.soakEvent(wc, e, now)
		return
	}
	s := w.soak
	var m wsbus.Message
	if err := json.Unmarshal(p, &m); err != nil {
		s.unexpected.Add(1)
		s.note(w.job.URL, "a message that is not JSON: %.200q", p)
		return
	}
	sc := wc.soak
	switch m.Type {
	case "subscribed":
		_ = wc.cursor.Subscribed(&m)
		w.soakSubscribed(wc, &m, false)
	case "unsubscribed":
		if sc.leaving == nil || m.Topic != soakTopic(sc.leaving.Topic) {
			s.unexpected.Add(1)
			s.note(w.job.URL, "unsubscribed from %s, not being unsubscribed", m.Topic)
			return
		}
		s.finish(sc.leaving)
		sc.leaving = nil
	case "error":
		s.serverErrors.Add(1)
		s.note(w.job.URL, "error %s on %s: %s", m.Code, m.Topic, m.Message)
		switch {
		case sc.leaving != nil && m.Topic == soakTopic(sc.leaving.Topic):
			s.finish(sc.leaving)
			sc.leaving = nil
		case m.Topic == soakTopic(sc.topic):
			// The subscription is gone (or never was): the reader drops
			// the connection and it is dialed again, which resumes the
			// span from its cursor, or subscribes afresh.
			sc.broken = true
		}
	case "pong":
	default:
		s.unexpected.Add(1)
		s.note(w.job.URL, "a message the soak does not expect: %.200q", p)
	}
}

// soakSubscribed takes the answer to a subscription: from the dial
// (dialed), which resumes the connection's span when it has one, or from
// a switch on the open connection. It runs with wc.mu held.
func (w *worker) soakSubscribed(wc *wconn, m *wsbus.Message, dialed bool) {
	s, sc := w.soak, wc.soak
	if m.Topic != soakTopic(sc.topic) || !dialed && (sc.span != nil || !sc.pending) {
		s.unexpected.Add(1)
		s.note(w.job.URL, "subscribed to %s, not asked for (subscribing %s)", m.Topic, soakTopic(sc.topic))
		return
	}
	if !m.Recovered {
		s.notRecovered.Add(1)
		missed := "unknown"
		if m.Missed != nil {
			missed = fmt.Sprint(*m.Missed)
		}
		s.note(w.job.URL, "%s: recovered:false (head %s seq %d, missed %s), cursor %s seq %d", m.Topic, m.Head, m.Seq, missed, wc.cursor.ID, wc.cursor.Seq)
	}
	sc.pending = false
	if sc.span != nil {
		return // resumed: the span goes on from its cursor
	}
	sp, err := newSpan(sc.topic, m.Head, m.Seq)
	if err != nil {
		s.unexpected.Add(1)
		s.note(w.job.URL, "%v", err)
		return
	}
	sc.span = sp
}

// soakEvent checks one event against the span of its topic. It runs with
// wc.mu held.
func (w *worker) soakEvent(wc *wconn, e soakEvent, now int64) {
	s, sc := w.soak, wc.soak
	var sp *Span
	switch {
	case sc.span != nil && e.topic == sc.span.Topic:
		sp = sc.span
	case sc.leaving != nil && e.topic == sc.leaving.Topic:
		sp = sc.leaving
	default:
		s.unexpected.Add(1)
		s.note(w.job.URL, "an event of %s (id %s, seq %d) on a connection that holds %s", soakTopic(e.topic), e.id, e.seq, soakTopic(sc.topic))
		return
	}
	last, lastSeq := sp.lastID, sp.Last
	id, _ := streams.ParseID(e.id) // checked by parseSoakEvent
	v := sp.take(e.id, id, e.seq, e.n)
	if v&duplicate != 0 {
		s.dups.Add(1)
		s.note(w.job.URL, "%s: event %s (n %d, seq %d) again or out of order, after %s (n %d)", soakTopic(e.topic), e.id, e.n, e.seq, last, lastSeq)
		return
	}
	if v&hole != 0 {
		s.lost.Add(e.n - lastSeq - 1)
		s.note(w.job.URL, "%s: events n %d..%d missing: %s (n %d) came after %s (n %d)", soakTopic(e.topic), lastSeq+1, e.n-1, e.id, e.n, last, lastSeq)
	}
	if v&badSeq != 0 {
		s.bad.Add(1)
		s.note(w.job.URL, "%s: event %s is the n %d published but has seq %d", soakTopic(e.topic), e.id, e.n, e.seq)
	}
	if sp == sc.span {
		_, _ = wc.cursor.Event(e.id, e.seq)
	}
	sh := wc.shard
	sh.mu.Lock()
	sh.all.Record(time.Duration(now - e.t))
	sh.mu.Unlock()
}

// closed is told that wc's socket is gone, for the reason err (nil: the
// worker's own doing); a soak connection the worker did not close itself
// is dialed again, another is counted as Report.Closed. It runs with
// wc.mu held.
func (w *worker) closed(wc *wconn, err error) {
	s := w.soak
	if s == nil {
		w.mu.Lock()
		w.report.Closed++
		if err != nil && len(w.report.Errors) < 5 {
			w.report.Errors = append(w.report.Errors, err.Error())
		}
		w.mu.Unlock()
		return
	}
	s.mu.Lock()
	select {
	case <-s.quit:
		s.mu.Unlock()
		return
	default:
	}
	s.wg.Add(1) // under s.mu: stopSoak's Wait cannot have begun
	s.mu.Unlock()
	sc := wc.soak
	if sc.leaving != nil {
		s.finish(sc.leaving)
		sc.leaving = nil
	}
	sc.pending, sc.broken = false, false
	s.away.Add(1)
	go w.redial(wc)
}

// redial dials wc again until it is back (resuming its span with its
// cursor), the worker quits, or soakRedialFor passes.
func (w *worker) redial(wc *wconn) {
	s := w.soak
	defer s.wg.Done()
	defer s.away.Add(-1)
	deadline := time.Now().Add(soakRedialFor)
	wait := rand.N(soakRedialJitter)
	for attempt := 0; ; attempt++ {
		timer := time.NewTimer(wait)
		select {
		case <-s.quit:
			timer.Stop()
			return
		case <-timer.C:
		}
		s.dials <- struct{}{}
		_, err := w.connect(wc, true)
		<-s.dials
		if err == nil {
			s.reconnects.Add(1)
			return
		}
		if time.Now().After(deadline) {
			s.gaveUp.Add(1)
			s.note(w.job.URL, "%s: not back after %v: %v", wc.topic, soakRedialFor, err)
			return
		}
		wait = rand.N(min(soakBackoffMax, soakBackoffMin<<min(attempt, 10)))
	}
}

// churn switches up to n connections, picked at random, to another
// topic. Only connections up and settled switch; the rest are skipped.
func (w *worker) churn(n int) {
	for tries := 0; n > 0 && tries < 4*n+16; tries++ {
		if w.switchTopic(w.conns[rand.IntN(len(w.conns))]) {
			n--
			w.soak.churned.Add(1)
		}
	}
}

// switchTopic unsubscribes wc from its topic and subscribes it to another
// in one write; the old topic's span takes events until "unsubscribed",
// the new one begins at its "subscribed".
func (w *worker) switchTopic(wc *wconn) bool {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	sc := wc.soak
	if wc.fd < 0 || sc.span == nil || sc.pending || sc.leaving != nil {
		return false
	}
	next := rand.IntN(w.soak.topics - 1)
	if next >= sc.topic {
		next++
	}
	err := w.in.send(wc, switchFrames(soakTopic(sc.topic), soakTopic(next)))
	if errors.Is(err, syscall.EAGAIN) {
		return false // nothing written: the socket is full
	}
	if err != nil {
		w.in.drop(wc, wc.fd, true)
		w.closed(wc, nil)
		return false
	}
	sc.leaving, sc.span, sc.pending, sc.topic = sc.span, nil, true, next
	sc.leaving.Open = false
	wc.topic, wc.cursor = soakTopic(next), wsbus.Cursor{}
	return true
}

// switchFrames is an unsubscribe of from and a subscribe of to, as masked
// client frames.
func switchFrames(from, to string) []byte {
	var b bytes.Buffer
	for _, m := range []string{
		`{"type":"unsubscribe","topic":` + string(streams.AppendJSONString(nil, from)) + `}`,
		`{"type":"subscribe","topic":` + string(streams.AppendJSONString(nil, to)) + `}`,
	} {
		_ = ws.WriteFrame(&b, ws.MaskFrame(ws.NewTextFrame([]byte(m))))
	}
	return b.Bytes()
}

// soakStats counts the worker's connections and problems so far.
func (w *worker) soakStats() *SoakStats {
	s := w.soak
	st := &SoakStats{
		Away: s.away.Load(), Reconnects: s.reconnects.Load(), GaveUp: s.gaveUp.Load(),
		Churned: s.churned.Load(), Lost: s.lost.Load(), Dups: s.dups.Load(), Bad: s.bad.Load(),
		NotRecovered: s.notRecovered.Load(), Unexpected: s.unexpected.Load(), ServerErrors: s.serverErrors.Load(),
		Notes: w.soakNotes(),
	}
	for _, wc := range w.conns {
		wc.mu.Lock()
		if wc.fd >= 0 && wc.soak.span != nil && !wc.soak.pending && wc.soak.leaving == nil {
			st.Open++
		}
		wc.mu.Unlock()
	}
	return st
}

// soakFinal compares the connections' subscriptions with counts, the
// events published to each topic.
func (w *worker) soakFinal(counts []uint64) SoakFinal {
	var f SoakFinal
	for _, wc := range w.conns {
		wc.mu.Lock()
		sc := wc.soak
		switch {
		case wc.fd < 0 || sc.span == nil || sc.pending || sc.leaving != nil:
			f.NotReady++
		case sc.span.Topic < len(counts) && counts[sc.span.Topic] > sc.span.Last:
			f.Missing += counts[sc.span.Topic] - sc.span.Last
		}
		wc.mu.Unlock()
	}
	return f
}

// soakSpans returns every span: those ended, then those still held.
func (w *worker) soakSpans() []Span {
	s := w.soak
	s.mu.Lock()
	out := append([]Span(nil), s.done...)
	s.mu.Unlock()
	for _, wc := range w.conns {
		wc.mu.Lock()
		if sp := wc.soak.span; sp != nil {
			out = append(out, *sp)
		}
		if sp := wc.soak.leaving; sp != nil {
			out = append(out, *sp)
		}
		wc.mu.Unlock()
	}
	return out
}

// soakNotes returns the problems noted so far.
func (w *worker) soakNotes() []string {
	w.soak.mu.Lock()
	defer w.soak.mu.Unlock()
	return append([]string(nil), w.soak.notes...)
}

// stopSoak stops every redial and waits for them; it may be called more
// than once.
func (w *worker) stopSoak() {
	if w.soak == nil {
		return
	}
	w.soak.mu.Lock()
	select {
	case <-w.soak.quit: // stopped already
	default:
		close(w.soak.quit)
	}
	w.soak.mu.Unlock()
	w.soak.wg.Wait()
}

// soakCommand answers the soak's own commands: "churn N", "final
// COUNTS", "spans".
func (w *worker) soakCommand(enc *json.Encoder, cmd, arg string) error {
	if w.soak == nil {
		return fmt.Errorf("bench worker: %q outside a soak", cmd)
	}
	switch cmd {
	case "churn":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("bench worker: churn %q: %w", arg, err)
		}
		w.churn(n)
		return enc.Encode(struct{}{})
	case "final":
		var counts []uint64
		if err := json.Unmarshal([]byte(arg), &counts); err != nil {
			return fmt.Errorf("bench worker: final: %w", err)
		}
		return enc.Encode(w.soakFinal(counts))
	default:
		return enc.Encode(w.soakSpans())
	}
}
