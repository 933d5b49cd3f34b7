package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Job is one worker's share of the connections.
type Job struct {
	URL    string   `json:"url"`    // WebSocket URL without query
	Source string   `json:"source"` // local IP to dial from
	Topics []string `json:"topics"` // the topic of each connection
}

// Report is what a worker tells the parent.
type Report struct {
	Connected int              `json:"connected"`
	Failed    int              `json:"failed"`
	Received  uint64           `json:"received"`
	All       Histogram        `json:"all"`  // every receipt
	Last      map[int64]uint64 `json:"last"` // broadcast number -> its slowest receipt here, µs
	Errors    []string         `json:"errors,omitempty"`
}

// eventData is the payload bench publishes: send time and broadcast number
// (negative for unicast events).
type eventData struct {
	T int64 `json:"t"` // unix nanoseconds at XADD
	K int64 `json:"k"`
}

type worker struct {
	job      Job
	mu       sync.Mutex
	report   Report
	conns    []net.Conn
	received atomic.Uint64
}

// RunWorker serves one Job read from in, writing reports to out.
func RunWorker(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	if !sc.Scan() {
		return fmt.Errorf("bench worker: no job on stdin")
	}
	w := &worker{report: Report{Last: map[int64]uint64{}}}
	if err := json.Unmarshal(sc.Bytes(), &w.job); err != nil {
		return fmt.Errorf("bench worker: decoding job: %w", err)
	}
	enc := json.NewEncoder(out)
	w.dialAll()
	for sc.Scan() {
		switch sc.Text() {
		case "report":
			w.mu.Lock()
			w.report.Received = w.received.Load()
			err := enc.Encode(&w.report)
			w.mu.Unlock()
			if err != nil {
				return err
			}
		case "quit":
			for _, c := range w.conns {
				// Reset rather than close: tens of thousands of sockets in
				// TIME_WAIT would block the next run's connections.
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				_ = c.Close()
			}
			return nil
		}
	}
	return sc.Err()
}

// dialAll opens every connection, 256 at a time, and waits until each has
// its subscription confirmed.
func (w *worker) dialAll() {
	local := &net.TCPAddr{IP: net.ParseIP(w.job.Source)}
	dialer := ws.Dialer{
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
			return d.DialContext(ctx, network, addr)
		},
	}
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	for _, topic := range w.job.Topics {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := w.dial(dialer, topic)
			w.mu.Lock()
			defer w.mu.Unlock()
			if err != nil {
				w.report.Failed++
				if len(w.report.Errors) < 5 {
					w.report.Errors = append(w.report.Errors, err.Error())
				}
				return
			}
			w.report.Connected++
			w.conns = append(w.conns, conn)
		}()
	}
	wg.Wait()
}

func (w *worker) dial(d ws.Dialer, topic string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, br, _, err := d.Dial(ctx, w.job.URL+"?topic="+url.QueryEscape(topic))
	if err != nil {
		return nil, err
	}
	var r io.Reader = conn
	if br != nil {
		r = br
	}
	rw := struct {
		io.Reader
		io.Writer
	}{r, conn}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	first, err := wsutil.ReadServerText(rw)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("waiting for subscribed: %w", err)
	}
	var m struct{ Type string }
	if json.Unmarshal(first, &m) != nil || m.Type != "subscribed" {
		_ = conn.Close()
		return nil, fmt.Errorf("first message %q, want subscribed", first)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go w.read(rw)
	return conn, nil
}

// read records every event's delay from XADD to receipt.
func (w *worker) read(rw io.ReadWriter) {
	var m struct {
		Type string
		Data eventData
	}
	for {
		b, err := wsutil.ReadServerText(rw)
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		if json.Unmarshal(b, &m) != nil || m.Type != "event" {
			continue
		}
		d := time.Duration(now - m.Data.T)
		w.received.Add(1)
		w.mu.Lock()
		w.report.All.Record(d)
		if m.Data.K >= 0 {
			us := uint64(max(d.Microseconds(), 0))
			w.report.Last[m.Data.K] = max(w.report.Last[m.Data.K], us)
		}
		w.mu.Unlock()
	}
}
