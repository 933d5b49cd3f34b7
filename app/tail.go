package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	gws "github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsbus/wsbus/bus"
)

// tailCursor is what tail remembers of a topic to resume it.
type tailCursor struct {
	since *string // the last event printed, or the head given at subscribe
	seq   uint64  // its seq
	epoch string
}

func runTail(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "tail [flags] TOPIC...", stderr)
	url := fs.String("url", "ws://127.0.0.1:8080/v1/ws", "WebSocket URL of a gateway")
	since := fs.String("since", "", "resume after this event ID (\"0\": everything retained); default only new events")
	count := fs.Int("count", 0, "exit after printing this many events (0: run until interrupted)")
	token := fs.String("token", "", "JWT for a gateway with authentication (sent as Authorization: Bearer)")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	cursors := make(map[string]*tailCursor)
	for _, t := range fs.Args() {
		c := &tailCursor{}
		if *since != "" {
			s := *since
			c.since = &s
		}
		cursors[t] = c
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	t := &tailer{url: *url, cursors: cursors, topics: fs.Args(), out: stdout, log: stderr, left: *count}
	if *token != "" {
		t.dialer.Header = gws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + *token}})
	}
	return t.run(ctx)
}

type tailer struct {
	dialer  gws.Dialer
	url     string
	topics  []string
	cursors map[string]*tailCursor
	out     io.Writer
	log     io.Writer
	left    int // events still to print; 0 means unbounded
}

var errTailDone = errors.New("tail: done")

// run connects, subscribes and prints until ctx ends or count is reached,
// reconnecting with backoff and resuming every topic from its cursor.
func (t *tailer) run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := t.session(ctx)
		if errors.Is(err, errTailDone) || ctx.Err() != nil {
			return nil
		}
		fmt.Fprintf(t.log, "# disconnected (%v); reconnecting in %v\n", err, backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (t *tailer) session(ctx context.Context) error {
	nc, br, _, err := t.dialer.Dial(ctx, t.url)
	if err != nil {
		return err
	}
	var conn io.ReadWriter = nc
	if br != nil {
		// The server may send frames right behind its handshake answer.
		conn = struct {
			io.Reader
			io.Writer
		}{br, nc}
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	for _, topic := range t.topics {
		c := t.cursors[topic]
		m := map[string]any{"type": "subscribe", "topic": topic, "since": c.since, "epoch": c.epoch}
		if c.since != nil {
			m["seq"] = c.seq
		}
		msg, _ := json.Marshal(m)
		if err := wsutil.WriteClientText(conn, msg); err != nil {
			return err
		}
	}
	for {
		data, err := wsutil.ReadServerText(conn)
		if err != nil {
			var closed wsutil.ClosedError
			if errors.As(err, &closed) {
				return fmt.Errorf("closed by server: %d %s", closed.Code, closed.Reason)
			}
			return err
		}
		if err := t.handle(data); err != nil {
			return err
		}
	}
}

func (t *tailer) handle(data []byte) error {
	var m bus.ServerMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("bad message from server: %w", err)
	}
	switch m.Type {
	case "event":
		if c := t.cursors[m.Topic]; c != nil {
			id := m.ID
			c.since, c.seq = &id, m.Seq
		}
		fmt.Fprintf(t.out, "%s %s %s\n", m.Topic, m.ID, m.Data)
		if t.left > 0 {
			if t.left--; t.left == 0 {
				return errTailDone
			}
		}
	case "subscribed":
		if c := t.cursors[m.Topic]; c != nil {
			c.epoch = m.Epoch
			if c.since == nil {
				// The head is the cursor until the first event: a drop
				// before it resumes from there and misses nothing.
				head := m.Head
				c.since, c.seq = &head, m.Seq
			}
		}
		fmt.Fprintf(t.log, "# subscribed %s recovered=%v epoch=%s head=%s seq=%d", m.Topic, m.Recovered, m.Epoch, m.Head, m.Seq)
		if m.Missed != nil {
			fmt.Fprintf(t.log, " missed=%d", *m.Missed)
		}
		fmt.Fprintln(t.log)
	case "error":
		fmt.Fprintf(t.log, "# error %s %s: %s\n", m.Code, m.Topic, m.Message)
	}
	return nil
}
