package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	wsbus "github.com/wsbus/wsbus/clients/go"
)

// Job is one worker's share of the connections.
type Job struct {
	URL     string   `json:"url"`     // WebSocket URL without query
	Sources []string `json:"sources"` // local IPs to dial from, in turn
	Topics  []string `json:"topics"`  // the topic of each connection
	// Own, when set, holds a second topic for each connection (mix
	// "pair"): subscribed with a subscribe message once the first is,
	// and resumed with its own cursor.
	Own []string `json:"own,omitempty"`
	// Soak, when set, makes the worker a soak client (soak_worker.go):
	// Topics are then soak topics.
	Soak *SoakJob `json:"soak,omitempty"`
	// Parallel is how many handshakes the worker has in flight at once
	// (0: 256). With many workers it is lower, so that the handshakes
	// queued at the servers all together stay within what a server
	// answers before its handshake timeout.
	Parallel int `json:"parallel,omitempty"`
	// Protocol is the servers' client protocol: "" for wsbus's (the
	// gateway's and the baselines'), Centrifugo for Centrifugo's JSON one.
	Protocol string `json:"protocol,omitempty"`
}

// Report is what a worker tells the parent.
type Report struct {
	Connected int              `json:"connected"`
	Failed    int              `json:"failed"`
	Received  uint64           `json:"received"`
	All       Histogram        `json:"all"`     // every broadcast receipt
	Unicast   Histogram        `json:"unicast"` // every unicast receipt
	Last      map[int64]uint64 `json:"last"`    // broadcast number -> its slowest receipt here, µs
	Errors    []string         `json:"errors,omitempty"`
	// FailedOwn is the own topic of each connection that failed to
	// connect (its second topic with mix "pair", else its only one), at
	// most maxFailedOwn: unicast leaves them out, having no one to reach.
	// (Past that many failures a run has failed anyway; the topics left
	// in are published to and count as lost.)
	FailedOwn []string `json:"failed_own,omitempty"`
	// Closed counts connections that ended after their subscription
	// without the worker closing them (a server's close, a reset).
	Closed int `json:"closed,omitempty"`

	// After a "resume": connections subscribed again, of them answered
	// recovered:false, events received since, and IDs received twice or
	// out of order on one connection.
	Resumed      int    `json:"resumed"`
	Retried      int    `json:"retried,omitempty"` // tries after a resume's first (see reconnectTries)
	NotRecovered int    `json:"not_recovered"`
	SinceResume  uint64 `json:"since_resume"`
	Duplicates   uint64 `json:"duplicates"`

	Soak *SoakStats `json:"soak,omitempty"` // a soak worker's counts
}

// eventData is the payload bench publishes: send time and broadcast number
// (kindStorm or kindUnicast for the other phases' events).
type eventData struct {
	T int64 `json:"t"` // unix nanoseconds at XADD
	K int64 `json:"k"`
}

// Event kinds besides broadcast numbers (which are >= 0).
const (
	kindStorm   = -1
	kindUnicast = -2
)

// wconn is one client connection and its resume cursor.
type wconn struct {
	topic  string
	dialer *ws.Dialer
	shard  *shard

	mu      sync.Mutex
	fd      int    // the socket, read by the worker's inbox; -1 when there is none
	rest    []byte // the start of a frame not all read yet
	hdr     bytes.Reader
	resumed bool         // connected by "resume": its events count as since
	cursor  wsbus.Cursor // where it stands: the last event received, or the head
	own     string       // its second topic (mix "pair"); "" when none
	ownAt   wsbus.Cursor // where it stands on own
	cf      cfCursor     // where it stands with Centrifugo
	soak    *soakConn    // a soak client's subscriptions; nil outside a soak
}

type worker struct {
	job     Job
	dialers []ws.Dialer // one per source address
	conns   []*wconn
	in      *inbox

	mu       sync.Mutex
	report   Report
	dialed   chan struct{} // closed once the first connectAll is done
	shards   [64]shard     // receipts, recorded by connection i in shards[i%64]
	received atomic.Uint64
	since    atomic.Uint64 // events received after the last resume
	dups     atomic.Uint64

	soak *soakWorker // nil outside a soak
}

// shard is a part of the receipts: connections record into different
// shards so their readers do not all contend for one lock.
type shard struct {
	mu      sync.Mutex
	all     Histogram
	unicast Histogram
	last    map[int64]uint64
	// capacity holds each capacity event's receipts here: their number
	// and the slowest, in µs.
	capacity map[int64]capReceipts
}

type capReceipts struct {
	n  uint64
	us uint64
}

// RunWorker serves one Job read from in: it dials every connection, and
// answers the commands "count" (a Count, at once), "report" (a Report,
// once every connection is dialed), "drop" (reset every connection),
// "resume" (reconnect every one with its cursor) and "quit", one JSON
// line each, on out. A soak worker also
// answers "churn N" (switch N connections to other topics), "final
// COUNTS" (a JSON array of the events published to each topic: a
// SoakFinal) and "spans" (every Span). The capacity phase asks "capacity
// FROM" and "capcount FROM" (a CapacityReport) and "redial" (dial every
// closed connection again).
func RunWorker(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	if !sc.Scan() {
		return fmt.Errorf("bench worker: no job on stdin")
	}
	w := &worker{report: Report{Last: map[int64]uint64{}}, dialed: make(chan struct{})}
	if err := json.Unmarshal(sc.Bytes(), &w.job); err != nil {
		return fmt.Errorf("bench worker: decoding job: %w", err)
	}
	for _, src := range w.job.Sources {
		// No TCP keepalive: Go's default probes every idle socket
		// every 15 s, which at a million connections is 67,000
		// probes a second from the clients alone.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second, Control: bindAddressNoPort, KeepAlive: -1}
		w.dialers = append(w.dialers, ws.Dialer{NetDial: d.DialContext})
	}
	if len(w.dialers) == 0 {
		return fmt.Errorf("bench worker: no source address")
	}
	var err error
	if w.job.Soak != nil {
		if w.soak, err = newSoakWorker(w.job.Soak); err != nil {
			return err
		}
		defer w.stopSoak()
	}
	if w.job.Own != nil && len(w.job.Own) != len(w.job.Topics) {
		return fmt.Errorf("bench worker: %d own topics for %d connections", len(w.job.Own), len(w.job.Topics))
	}
	for i, t := range w.job.Topics {
		wc := &wconn{topic: t, dialer: &w.dialers[i%len(w.dialers)], shard: &w.shards[i%len(w.shards)], fd: -1}
		if w.job.Own != nil {
			wc.own = w.job.Own[i]
		}
		if w.soak != nil {
			k, ok := soakTopicIndex(t)
			if !ok || k >= w.soak.topics {
				return fmt.Errorf("bench worker: %q is not a topic of the soak", t)
			}
			wc.soak = &soakConn{topic: k}
		}
		w.conns = append(w.conns, wc)
	}
	if w.in, err = newInbox(w); err != nil {
		return fmt.Errorf("bench worker: %w", err)
	}
	enc := json.NewEncoder(out)
	go func() {
		w.connectAll(false)
		close(w.dialed)
	}()
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		if cmd != "count" && cmd != "quit" {
			<-w.dialed // the others wait for the connections
		}
		switch cmd {
		case "count":
			w.mu.Lock()
			c := Count{Connected: w.report.Connected, Failed: w.report.Failed, Closed: w.report.Closed, Received: w.received.Load(),
				Resumed: w.report.Resumed, Retried: w.report.Retried, NotRecovered: w.report.NotRecovered,
				SinceResume: w.since.Load(), Duplicates: w.dups.Load()}
			w.mu.Unlock()
			if err := enc.Encode(c); err != nil {
				return err
			}
		case "report":
			var soak *SoakStats
			if w.soak != nil {
				soak = w.soakStats()
			}
			w.mu.Lock()
			w.report.Soak = soak
			w.report.Received = w.received.Load()
			w.report.SinceResume = w.since.Load()
			w.report.Duplicates = w.dups.Load()
			w.report.All, w.report.Unicast, w.report.Last = Histogram{}, Histogram{}, map[int64]uint64{}
			for i := range w.shards {
				sh := &w.shards[i]
				sh.mu.Lock()
				w.report.All.Merge(sh.all)
				w.report.Unicast.Merge(sh.unicast)
				for k, us := range sh.last {
					w.report.Last[k] = max(w.report.Last[k], us)
				}
				sh.mu.Unlock()
			}
			err := enc.Encode(&w.report)
			w.mu.Unlock()
			if err != nil {
				return err
			}
		case "drop":
			w.reset()
			if err := enc.Encode(struct{}{}); err != nil {
				return err
			}
		case "resume":
			w.since.Store(0)
			w.mu.Lock()
			w.report.Resumed, w.report.NotRecovered, w.report.Retried = 0, 0, 0
			w.mu.Unlock()
			if err := enc.Encode(struct{}{}); err != nil { // answered at once; progress via count
				return err
			}
			go w.connectAll(true)
		case "capacity", "capcount":
			from, _ := strconv.ParseInt(arg, 10, 64)
			if err := enc.Encode(w.capacityReport(from, cmd == "capacity")); err != nil {
				return err
			}
		case "redial":
			w.redialClosed()
			if err := enc.Encode(struct{}{}); err != nil {
				return err
			}
		case "churn", "final", "spans":
			if err := w.soakCommand(enc, cmd, arg); err != nil {
				return err
			}
		case "quit":
			w.stopSoak()
			w.reset()
			return nil
		}
	}
	return sc.Err()
}

// Count is a worker's answer to "count", which it gives at once, while
// its connections are still being dialed: how many are open so far and
// how many failed; for a broadcast's turns, the receipts so far and the
// connections the server closed; and how a resume storm is going.
type Count struct {
	Connected int    `json:"connected"`
	Failed    int    `json:"failed"`
	Closed    int    `json:"closed,omitempty"`
	Received  uint64 `json:"received,omitempty"`
	// The resume storm's figures, as in Report: the storm waits on these
	// rather than on full reports, whose histograms are merged under
	// every shard's lock.
	Resumed      int    `json:"resumed,omitempty"`
	Retried      int    `json:"retried,omitempty"`
	NotRecovered int    `json:"not_recovered,omitempty"`
	SinceResume  uint64 `json:"since_resume,omitempty"`
	Duplicates   uint64 `json:"duplicates,omitempty"`
}

// parallel is how many connections the worker dials at once.
func (w *worker) parallel() int {
	if w.job.Parallel > 0 {
		return w.job.Parallel
	}
	return 256
}

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT.
const ipBindAddressNoPort = 24

// bindAddressNoPort lets connect, not bind, choose the source port: bind
// to an address with port 0 searches every port in use on it, which made
// dialing tens of thousands of connections from one address take seconds
// of kernel time.
func bindAddressNoPort(_, _ string, rc syscall.RawConn) error {
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}

// reset closes every connection with a TCP reset.
func (w *worker) reset() {
	for _, wc := range w.conns {
		wc.mu.Lock()
		if wc.fd >= 0 {
			w.in.drop(wc, wc.fd, true)
		}
		wc.mu.Unlock()
	}
}

// connectAll opens every connection, w.parallel() at a time; resume
// sends each one's cursor and epoch.
func (w *worker) connectAll(resume bool) {
	slots := make(chan struct{}, w.parallel())
	var wg sync.WaitGroup
	for _, wc := range w.conns {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			recovered, retried, err := w.connectOrRetry(wc, resume, slots)
			w.mu.Lock()
			defer w.mu.Unlock()
			w.report.Retried += retried
			switch {
			case err != nil:
				w.report.Failed++
				if own := cmp.Or(wc.own, wc.topic); !resume && len(w.report.FailedOwn) < maxFailedOwn {
					w.report.FailedOwn = append(w.report.FailedOwn, own)
				}
				if len(w.report.Errors) < 5 {
					w.report.Errors = append(w.report.Errors, err.Error())
				}
			case resume:
				w.report.Resumed++
				if !recovered {
					w.report.NotRecovered++
				}
			default:
				w.report.Connected++
			}
		}()
	}
	wg.Wait()
}

// maxFailedOwn bounds a worker's Report.FailedOwn.
const maxFailedOwn = 10000

// reconnectTries is how often a resume is tried before it counts as
// failed: a client reconnects after any failure, as the Go client does;
// under a storm that is mostly the server's "unavailable" (a partition
// changing hands) or a connection cut before its answer. The waits
// between tries double from reconnectWait, each a random time between
// half of it and all of it.
const (
	reconnectTries = 5
	reconnectWait  = 250 * time.Millisecond
)

// connectOrRetry connects wc; a resume that fails is tried again up to
// reconnectTries in all, without one of the handshake slots (held when
// it is called) while it waits. retried is how many tries came after the
// first. recovered is false when any try was answered recovered:false:
// a try can fail after an answer moved wc's cursor (the first topic's
// "subscribed" came, the second topic's did not), and the next one
// resumes from there.
func (w *worker) connectOrRetry(wc *wconn, resume bool, slots chan struct{}) (recovered bool, retried int, err error) {
	recovered = true
	wait := reconnectWait
	for {
		ok, err := w.connect(wc, resume)
		recovered = recovered && ok
		if err == nil || !resume || retried == reconnectTries-1 {
			return recovered, retried, err
		}
		retried++
		<-slots
		time.Sleep(wait/2 + rand.N(wait/2))
		slots <- struct{}{}
		wait *= 2
	}
}

// connect dials wc, waits for its subscription and starts its reader.
// recovered is false when an answer was recovered:false, also when a
// later step then failed (the answer has moved wc's cursor); it is true
// when a try failed before any answer.
func (w *worker) connect(wc *wconn, resume bool) (recovered bool, err error) {
	if w.job.Protocol == Centrifugo {
		return w.connectCentrifugo(wc, resume)
	}
	target := w.job.URL + "?topic=" + url.QueryEscape(wc.topic)
	wc.mu.Lock()
	if since, seq, hasSeq, epoch := wc.cursor.Resume(); resume && since != "" {
		target += "&since=" + url.QueryEscape(since) + "&epoch=" + url.QueryEscape(epoch)
		if hasSeq {
			target += "&seq=" + strconv.FormatUint(seq, 10)
		}
	}
	wc.mu.Unlock()
	conn, br, rw, err := dial(wc, target)
	if err != nil {
		return true, err
	}
	first, err := wsutil.ReadServerText(rw)
	if err != nil {
		_ = conn.Close()
		return true, fmt.Errorf("waiting for subscribed: %w", err)
	}
	var m wsbus.Message
	if json.Unmarshal(first, &m) != nil || m.Type != "subscribed" {
		_ = conn.Close()
		return true, fmt.Errorf("first message %q, want subscribed", first)
	}
	wc.mu.Lock()
	_ = wc.cursor.Subscribed(&m) // a gap is counted as not recovered below
	if wc.soak != nil {
		w.soakSubscribed(wc, &m, true)
	}
	wc.mu.Unlock()
	recovered = m.Recovered
	if wc.own != "" {
		ownRecovered, err := w.subscribeOwn(wc, rw, resume)
		if err != nil {
			_ = conn.Close()
			return recovered, err
		}
		recovered = recovered && ownRecovered
	}
	early, _ := br.Peek(br.Buffered())
	if err := w.in.adopt(wc, conn, early, resume); err != nil {
		return recovered, err
	}
	return recovered, nil
}

// subscribeOwn subscribes wc to its second topic, resuming from its
// cursor there when resume is set, and waits for the answer; events of
// the first topic that come before it are recorded once it has come, so
// that a connection that fails here counts none of them.
func (w *worker) subscribeOwn(wc *wconn, rw io.ReadWriter, resume bool) (recovered bool, err error) {
	wc.mu.Lock()
	wc.resumed = resume // the events below count as the inbox's would
	from := wc.ownAt
	if !resume {
		from = wsbus.Cursor{} // only new events
	}
	wc.mu.Unlock()
	if err := wsutil.WriteClientText(rw, from.Subscribe(wc.own)); err != nil {
		return false, fmt.Errorf("subscribing to %s: %w", wc.own, err)
	}
	type early struct {
		p  []byte
		at int64
	}
	var events []early
	for {
		p, err := wsutil.ReadServerText(rw)
		if err != nil {
			return false, fmt.Errorf("waiting for subscribed to %s: %w", wc.own, err)
		}
		if bytes.HasPrefix(p, eventHead) {
			events = append(events, early{p, time.Now().UnixNano()})
			continue
		}
		var m wsbus.Message
		if json.Unmarshal(p, &m) != nil || m.Type != "subscribed" || m.Topic != wc.own {
			return false, fmt.Errorf("answer %q to subscribing to %s, want subscribed", p, wc.own)
		}
		wc.mu.Lock()
		defer wc.mu.Unlock()
		for _, e := range events {
			w.record(wc, e.p, e.at)
		}
		_ = wc.ownAt.Subscribed(&m)
		return m.Recovered, nil
	}
}

// dial opens a WebSocket to target from wc's source address, with 30 s
// for the handshake and for the server's first answer: rw reads through
// br, which holds what the handshake read past its response.
func dial(wc *wconn, target string) (conn net.Conn, br *bufio.Reader, rw io.ReadWriter, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, br, _, err = wc.dialer.Dial(ctx, target)
	if err != nil {
		return nil, nil, nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, 1024)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return conn, br, struct {
		io.Reader
		io.Writer
	}{br, conn}, nil
}

// record takes the delay from XADD to receipt of an event and checks IDs
// only ever grow on the connection's cursor. It picks the fields out of the
// event without a JSON decoder: the client is the same for every server
// measured, and the cheaper it is the more the measurement is of the
// server. It runs with wc.mu held.
func (w *worker) record(wc *wconn, p []byte, now int64) {
	if wc.soak != nil {
		w.soakRecord(wc, p, now)
		return
	}
	if w.job.Protocol == Centrifugo {
		w.recordCentrifugo(wc, p, now)
		return
	}
	id, seq, topic, t, k, ok := parseEvent(p)
	if !ok {
		return
	}
	at := &wc.cursor
	if wc.own != "" && string(topic) == wc.own {
		at = &wc.ownAt
	}
	if fresh, _ := at.Event(id, seq); !fresh {
		w.dups.Add(1)
	}
	w.tally(wc, t, k, now)
}

// tally counts the receipt at now of an event sent at t, of kind or
// broadcast number k. It runs with wc.mu held.
func (w *worker) tally(wc *wconn, t, k, now int64) {
	d := time.Duration(now - t)
	if k >= capacityBase {
		w.recordCapacity(wc.shard, k-capacityBase, d)
		return
	}
	w.received.Add(1)
	if wc.resumed && k == kindStorm {
		// Only the storm's own events: a resume also brings a broadcast
		// event the connection had not had yet (a server behind at the
		// drop), which is no part of what the storm counts.
		w.since.Add(1)
	}
	sh := wc.shard
	sh.mu.Lock()
	switch k {
	case kindUnicast:
		sh.unicast.Record(d)
	case kindStorm:
	default:
		sh.all.Record(d)
	}
	if k >= 0 {
		if sh.last == nil {
			sh.last = map[int64]uint64{}
		}
		us := uint64(max(d.Microseconds(), 0))
		sh.last[k] = max(sh.last[k], us)
	}
	sh.mu.Unlock()
}

// recordCapacity counts a receipt of capacity event k.
func (w *worker) recordCapacity(sh *shard, k int64, d time.Duration) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.capacity == nil {
		sh.capacity = map[int64]capReceipts{}
	}
	r := sh.capacity[k]
	r.n++
	r.us = max(r.us, uint64(max(d.Microseconds(), 0)))
	sh.capacity[k] = r
}

// capacityReport answers "capacity FROM" (with each event's slowest
// receipt when last is set) and "capcount FROM"; receipts of events
// before from are forgotten.
func (w *worker) capacityReport(from int64, last bool) CapacityReport {
	var rep CapacityReport
	for _, wc := range w.conns {
		wc.mu.Lock()
		if wc.fd >= 0 {
			rep.Open++
		}
		wc.mu.Unlock()
	}
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		for k, r := range sh.capacity {
			if k < from {
				delete(sh.capacity, k)
				continue
			}
			rep.Received += r.n
			if !last {
				continue
			}
			if j := int(k - from); j >= len(rep.Last) {
				rep.Last = append(rep.Last, make([]uint64, j+1-len(rep.Last))...)
			}
			rep.Last[k-from] = max(rep.Last[k-from], r.us+1)
		}
		sh.mu.Unlock()
	}
	return rep
}

// redialClosed dials again, w.parallel() at a time, every connection
// that is closed.
func (w *worker) redialClosed() {
	sem := make(chan struct{}, w.parallel())
	var wg sync.WaitGroup
	for _, wc := range w.conns {
		wc.mu.Lock()
		closed := wc.fd < 0
		wc.mu.Unlock()
		if !closed {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, _ = w.connect(wc, false) // what stays closed shows in the next count
		}()
	}
	wg.Wait()
}

// eventHead starts every event message.
var eventHead = []byte(`{"type":"event","id":"`)

// parseEvent picks the ID, the seq, the topic and the bench's own data,
// {"t":...,"k":...}, out of an event message; ok is false for anything
// else. The seq is 0 when the event has none; topic points into b.
func parseEvent(b []byte) (id string, seq uint64, topic []byte, t, k int64, ok bool) {
	rest, found := bytes.CutPrefix(b, eventHead)
	if !found {
		return "", 0, nil, 0, 0, false
	}
	i := bytes.IndexByte(rest, '"')
	if i < 0 {
		return "", 0, nil, 0, 0, false
	}
	id = string(rest[:i])
	if after, found := bytes.CutPrefix(rest[i:], []byte(`","seq":`)); found {
		digits, _, _ := bytes.Cut(after, []byte(`,`))
		seq, _ = strconv.ParseUint(string(digits), 10, 64)
	}
	if _, after, found := bytes.Cut(rest[i:], []byte(`,"topic":"`)); found {
		topic, _, _ = bytes.Cut(after, []byte(`"`))
	}
	_, data, found := bytes.Cut(rest[i:], []byte(`"data":{"t":`))
	if !found {
		return "", 0, nil, 0, 0, false
	}
	ts, data, _ := bytes.Cut(data, []byte(`,"k":`))
	ks, _, _ := bytes.Cut(data, []byte(`}`))
	t, err1 := strconv.ParseInt(string(ts), 10, 64)
	k, err2 := strconv.ParseInt(string(ks), 10, 64)
	return id, seq, topic, t, k, err1 == nil && err2 == nil
}
