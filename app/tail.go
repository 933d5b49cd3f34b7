package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	wsbus "github.com/wsbus/wsbus/clients/go"
)

// runTail is wsbus tail: a terminal client on the Go client package,
// which keeps each topic's cursor and resumes it on every reconnect.
func runTail(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "tail [flags] TOPIC...", stderr)
	url := fs.String("url", "ws://127.0.0.1:8080/v1/ws", "WebSocket URL of a gateway")
	since := fs.String("since", "", "resume after this event ID (\"0\": everything retained; \"acked\": after the subject's acknowledged cursor); default only new events")
	count := fs.Int("count", 0, "exit after printing this many events (0: run until interrupted)")
	token := fs.String("token", "", "JWT for a gateway with authentication (sent as Authorization: Bearer)")
	user := fs.String("user", "", "the subject on an --insecure gateway (for acks and since=acked)")
	ack := fs.Bool("ack", false, "acknowledge each event once printed (needs a subject: --token or --user)")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, done := context.WithCancel(ctx)
	defer done()
	t := &tailer{out: stdout, log: stderr, left: *count, done: done}
	t.client = wsbus.New(*url, wsbus.Options{Token: *token, User: *user, OnState: t.state, OnError: t.error})
	for _, topic := range fs.Args() {
		t.client.Subscribe(topic, wsbus.SubscribeOptions{
			Since: *since, OnEvent: t.event, OnSubscribed: t.subscribed, OnGap: t.gap,
		})
	}
	t.ack = *ack
	return t.client.Run(ctx)
}

// tailer prints what its client hands it: events on stdout, the rest as
// "# " lines on stderr.
type tailer struct {
	client *wsbus.Client
	out    io.Writer
	log    io.Writer
	ack    bool
	done   func()

	mu   sync.Mutex
	left int // events still to print; 0 means unbounded
}

func (t *tailer) event(e wsbus.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.left < 0 {
		return // done: the client is closing
	}
	fmt.Fprintf(t.out, "%s %s %s\n", e.Topic, e.ID, e.Data)
	if t.ack {
		_ = t.client.Ack(e.Topic, e.ID)
	}
	if t.left > 0 {
		if t.left--; t.left == 0 {
			t.left = -1
			t.done()
		}
	}
}

func (t *tailer) subscribed(s wsbus.Subscribed) {
	fmt.Fprintf(t.log, "# subscribed %s recovered=%v epoch=%s head=%s seq=%d", s.Topic, s.Recovered, s.Epoch, s.Head, s.Seq)
	if s.Missed != nil {
		fmt.Fprintf(t.log, " missed=%d", *s.Missed)
	}
	if s.Unread != nil {
		fmt.Fprintf(t.log, " acked=%s unread=%d", s.Acked, *s.Unread)
	}
	fmt.Fprintln(t.log)
}

func (t *tailer) gap(g wsbus.Gap) {
	switch {
	case g.Seq > 0:
		fmt.Fprintf(t.log, "# gap in %s: seq %d follows %d\n", g.Topic, g.Seq, g.After)
	case g.Missed != nil:
		fmt.Fprintf(t.log, "# gap in %s: %d events trimmed from history while away\n", g.Topic, *g.Missed)
	default:
		fmt.Fprintf(t.log, "# gap in %s: the server could not prove the resume complete\n", g.Topic)
	}
}

func (t *tailer) error(m wsbus.Message) {
	fmt.Fprintf(t.log, "# error %s %s: %s\n", m.Code, m.Topic, m.Message)
}

func (t *tailer) state(s wsbus.State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case wsbus.Closed:
		if t.left >= 0 {
			fmt.Fprintf(t.log, "# disconnected; reconnecting\n")
		}
	}
}
