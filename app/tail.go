package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	gws "github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	wsbus "github.com/wsbus/wsbus/clients/go"
)

// runTail is wsbus tail: a terminal client on the Go client package,
// which keeps each topic's cursor and resumes it on every reconnect.
func runTail(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", "tail [flags] TOPIC...", stdout, stderr)
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
	if err := flagAfterArgs(fs); err != nil {
		return err
	}
	if (*ack || *since == "acked") && *token == "" && *user == "" {
		return errors.New("--ack and --since acked need a subject: give --token (its sub) or, on an --insecure gateway, --user")
	}
	if !strings.HasPrefix(*url, "ws://") && !strings.HasPrefix(*url, "wss://") {
		return fmt.Errorf("--url %q: want a WebSocket URL, ws://HOST:PORT/v1/ws or wss://…", *url)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := &tailer{out: stdout, log: stderr, left: *count, ack: *ack, url: *url, cancel: cancel}
	t.client = wsbus.New(*url, wsbus.Options{Token: *token, User: *user, OnState: t.state, OnError: t.error})
	for _, topic := range fs.Args() {
		t.client.Subscribe(topic, wsbus.SubscribeOptions{
			Since: *since, OnEvent: t.event, OnSubscribed: t.subscribed, OnGap: t.gap,
		})
	}
	if err := t.client.Run(ctx); err != nil {
		return err
	}
	return t.failure()
}

// tailer prints what its client hands it: events on stdout, the rest as
// "# " lines on stderr. It gives up (exits 1) on what retrying cannot
// mend: a refused handshake, a refused subscription.
type tailer struct {
	client *wsbus.Client
	out    io.Writer
	log    io.Writer
	ack    bool
	url    string
	cancel func()

	mu   sync.Mutex
	left int   // events still to print; 0 means unbounded, -1 done
	err  error // why it gave up
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
			t.cancel()
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

// fatalCodes are the gateway's errors that no retry mends.
var fatalCodes = map[string]bool{
	"bad_topic": true, "bad_since": true, "bad_seq": true, "forbidden": true,
	"no_subject": true, "too_many_subscriptions": true, "unauthorized": true,
}

func (t *tailer) error(m wsbus.Message) {
	fmt.Fprintf(t.log, "# error %s %s: %s\n", m.Code, m.Topic, m.Message)
	if fatalCodes[m.Code] {
		t.giveUp(fmt.Errorf("%s: %s", m.Code, m.Message))
	}
}

func (t *tailer) state(s wsbus.State, err error) {
	if s != wsbus.Closed || err == nil {
		return
	}
	t.mu.Lock()
	done := t.left < 0 || t.err != nil
	t.mu.Unlock()
	if done {
		return
	}
	var refused gws.StatusError
	var closed wsutil.ClosedError
	switch {
	case errors.As(err, &refused) && int(refused) >= 400 && int(refused) < 500:
		t.giveUp(fmt.Errorf("the gateway refused the connection: HTTP %d %s%s", int(refused), http.StatusText(int(refused)), refusedHint(int(refused))))
		return
	case errors.As(err, &closed):
		fmt.Fprintf(t.log, "# closed by the gateway: %d %s; reconnecting\n", closed.Code, closed.Reason)
	default:
		fmt.Fprintf(t.log, "# disconnected (%v); reconnecting to %s\n", err, t.url)
	}
}

func refusedHint(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return " (give --token with a valid JWT)"
	case http.StatusForbidden:
		return " (origin or token refused)"
	case http.StatusNotFound:
		return " (is --url the gateway's /v1/ws?)"
	}
	return ""
}

func (t *tailer) giveUp(err error) {
	t.mu.Lock()
	if t.err == nil {
		t.err = err
	}
	t.mu.Unlock()
	t.cancel()
}

func (t *tailer) failure() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}
