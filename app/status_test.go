package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// statusAnswer is GET /status.json as a client reads it.
type statusAnswer struct {
	Partitions int
	Node       string
	Nodes      []struct {
		ID            string
		Partitions    int
		Connections   *int64
		Subscriptions *int64
	}
	Partition []struct {
		P            int
		Owner        string
		Token        int64
		Lag, Pending int64
		Canary       *struct {
			Lost      *uint64
			LatencyMS *float64 `json:"latency_ms"`
			Last      *time.Time
		}
	}
}

// getStatus fetches path from node with the header h, returning the status
// code, the Content-Type and the body.
func getStatus(tb testing.TB, node *testNode, path string, h http.Header) (int, string, []byte) {
	tb.Helper()
	req, _ := http.NewRequest("GET", "http://"+node.addr+path, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("reading GET %s: %v", path, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

// TestStatusJSONShowsTheFleet: /status.json lists the live node with its
// own connection and subscription counts, every partition with its owner,
// token and lag, a partition still leased to a dead node ("ghost", with
// three entries waiting) with that owner and a lag of 3, and a zero canary
// on each.
func TestStatusJSONShowsTheFleet(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	rdb, keys, ctx := srv.Client(t), streams.Keys{Prefix: prefix}, context.Background()
	if _, err := migrations.Run(ctx, rdb, keys, 4); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, keys.Owner(1), "ghost 7", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(1), Values: []any{"topic", "t", "data", i}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	node := startNode(t, serveConfig(t, srv, prefix, "--jwt-secret", testSecret, "--publish-key", "opkey"))
	c, err := wstest.DialHeader(node.url+"?topic=news", bearer(hs(t, claims("u1", time.Hour, "news"))))
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(t).Expect("subscribed", testutil.Wait)

	var st statusAnswer
	testutil.Eventually(t, testutil.Wait, func() error {
		code, _, body := getStatus(t, node, "/status.json", bearer("opkey"))
		st = statusAnswer{}
		if err := json.Unmarshal(body, &st); code != 200 || err != nil {
			return fmt.Errorf("GET /status.json = %d %v: %s", code, err, body)
		}
		return fleetShown(st, "node-"+prefix)
	})
	if n := st.Nodes[0]; *n.Connections != 1 || *n.Subscriptions != 1 || n.Partitions != 3 {
		t.Errorf("node %+v: want 3 partitions, 1 connection, 1 subscription", n)
	}
	for _, p := range st.Partition {
		if c := p.Canary; c == nil || c.Lost == nil || c.LatencyMS == nil || c.Last == nil ||
			*c.Lost != 0 || *c.LatencyMS != 0 || !c.Last.IsZero() {
			t.Errorf("partition %d: canary %+v, want {lost:0, latency_ms:0, last: zero} until the canary lands", p.P, c)
		}
	}
}

// fleetShown checks st for the fleet of TestStatusJSONShowsTheFleet.
func fleetShown(st statusAnswer, self string) error {
	if st.Node != self || len(st.Nodes) != 1 || st.Nodes[0].ID != self || st.Nodes[0].Connections == nil {
		return fmt.Errorf("node %q, nodes %+v: want %s alone, with its counts", st.Node, st.Nodes, self)
	}
	if st.Partitions != 4 || len(st.Partition) != 4 {
		return fmt.Errorf("%d partitions, %d listed: want 4", st.Partitions, len(st.Partition))
	}
	for _, p := range st.Partition {
		owner, lag := self, int64(0)
		if p.P == 1 {
			owner, lag = "ghost", 3
		}
		if p.Owner != owner || p.Lag != lag || p.Token < 1 || p.P == 1 && p.Token != 7 {
			return fmt.Errorf("partition %d: owner %q token %d lag %d, want owner %s lag %d", p.P, p.Owner, p.Token, p.Lag, owner, lag)
		}
	}
	return nil
}

// TestStatusAccess: the status page and its JSON need the operator key
// (--publish-key), also on an --insecure gateway that has one; they are
// open on an --insecure gateway without one, and off on a secure gateway
// without one.
func TestStatusAccess(t *testing.T) {
	srv := redistest.Start(t)
	keyed := startNode(t, serveConfig(t, srv, redistest.Prefix(t), "--jwt-secret", testSecret, "--publish-key", "opkey", "--partitions", "2"))
	keyless := startNode(t, serveConfig(t, srv, redistest.Prefix(t)+"-keyless", "--jwt-secret", testSecret, "--partitions", "2"))
	open := startNode(t, testConfig(t, srv, redistest.Prefix(t)+"-open", "--partitions", "2"))
	insecureKeyed := startNode(t, testConfig(t, srv, redistest.Prefix(t)+"-ik", "--publish-key", "opkey", "--partitions", "2"))
	for _, tt := range []struct {
		name   string
		node   *testNode
		path   string
		header http.Header
		want   int
		typ    string
	}{
		{"no key", keyed, "/status.json", nil, 401, "application/json"},
		{"wrong key", keyed, "/status.json", bearer("nope"), 401, "application/json"},
		{"a JWT is not the key", keyed, "/status.json", bearer(hs(t, claims("u1", time.Hour, "*"))), 401, "application/json"},
		{"bearer key", keyed, "/status.json", bearer("opkey"), 200, "application/json"},
		{"query key", keyed, "/status.json?key=opkey", nil, 200, "application/json"},
		{"page without key", keyed, "/status", nil, 401, "application/json"},
		{"page with key", keyed, "/status?key=opkey", nil, 200, "text/html; charset=utf-8"},
		{"no key configured", keyless, "/status.json", bearer("opkey"), 403, "application/json"},
		{"page, no key configured", keyless, "/status", nil, 403, "application/json"},
		{"insecure", open, "/status.json", nil, 200, "application/json"},
		{"insecure page", open, "/status", nil, 200, "text/html; charset=utf-8"},
		{"insecure with a key, no key", insecureKeyed, "/status.json", nil, 401, "application/json"},
		{"insecure with a key, the key", insecureKeyed, "/status.json", bearer("opkey"), 200, "application/json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, typ, body := getStatus(t, tt.node, tt.path, tt.header)
			if code != tt.want || typ != tt.typ {
				t.Fatalf("GET %s = %d %s, want %d %s: %s", tt.path, code, typ, tt.want, tt.typ, body)
			}
			var answer struct{ Error string }
			switch {
			case code != 200 && (json.Unmarshal(body, &answer) != nil || !strings.Contains(answer.Error, "--publish-key")):
				t.Errorf("refusal %s does not say how to get in (--publish-key)", body)
			case strings.HasPrefix(typ, "text/html") && !strings.Contains(string(body), `"status.json"`):
				t.Errorf("the page does not fetch status.json:\n%s", body)
			}
		})
	}
}

// TestStatusWatch runs the --watch loop against a real bus: it draws a
// frame every interval (a blank line between frames when not a terminal;
// clearing the screen on one; a JSON line each with --json), keeps going
// through a failed read, and returns nil once its context ends.
func TestStatusWatch(t *testing.T) {
	b := newTestBus(t, "--partitions", "3")
	c := common{redis: stringList{values: []string{b.srv.URL()}}, prefix: b.prefix}
	// The node has joined (its first heartbeat) and owns the partitions
	// before the first frame is drawn.
	testutil.Eventually(t, testutil.Wait, func() error {
		st, err := ReadStatus(context.Background(), b.Redis, b.Keys)
		if err != nil {
			return err
		}
		if len(st.Nodes) != 1 {
			return fmt.Errorf("%d live nodes, want the test's node", len(st.Nodes))
		}
		for _, p := range st.Partition {
			if p.Owner == "" {
				return fmt.Errorf("partition %d has no owner yet", p.P)
			}
		}
		return nil
	})
	// drawn checks that a frame starts with start and shows the bus.
	drawn := func(start string) func(string) bool {
		return func(f string) bool {
			return strings.HasPrefix(f, start) && strings.Contains(f, fmt.Sprintf("bus %q: 3 partitions", b.prefix)) &&
				strings.Contains(f, "\nnode-"+b.prefix+" ")
		}
	}
	for _, tt := range []struct {
		name        string
		frames      statusFrames
		first, next func(frame string) bool
	}{
		{"pipe", statusFrames{every: 20 * time.Millisecond},
			drawn("Every 20ms: wsbus status at "), drawn("\nEvery 20ms: wsbus status at ")},
		{"terminal", statusFrames{every: 20 * time.Millisecond, clear: true},
			drawn("\x1b[H\x1b[2JEvery 20ms: "), drawn("\x1b[H\x1b[2JEvery 20ms: ")},
		{"json", statusFrames{every: 20 * time.Millisecond, json: true}, jsonFrame(b.prefix), jsonFrame(b.prefix)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			frames := watchFrames(t, func(ctx context.Context, w io.Writer) error { return c.watchStatus(ctx, w, tt.frames) })
			if !tt.first(frames[0]) || !tt.next(frames[1]) {
				t.Fatalf("frames:\n%q\n%q", frames[0], frames[1])
			}
		})
	}
	t.Run("failed read", func(t *testing.T) {
		reads := 0
		read := func(context.Context) (Status, error) {
			if reads++; reads == 1 {
				return Status{}, errors.New("streams: redis down")
			}
			return Status{Prefix: "p", Partitions: 1}, nil
		}
		frames := watchFrames(t, func(ctx context.Context, w io.Writer) error {
			return watchStatus(ctx, w, statusFrames{every: 20 * time.Millisecond}, read)
		})
		if !strings.Contains(frames[0], "reading the status: redis down\n") || !strings.Contains(frames[1], `bus "p": 1 partitions`) {
			t.Fatalf("frames:\n%q\n%q", frames[0], frames[1])
		}
	})
}

// jsonFrame returns a check that a frame is one line of JSON: the status
// of the bus with prefix.
func jsonFrame(prefix string) func(string) bool {
	return func(f string) bool {
		var st Status
		return strings.Count(f, "\n") == 1 && json.Unmarshal([]byte(f), &st) == nil && st.Prefix == prefix && len(st.Partition) == 3
	}
}

// frameWriter passes on each write, which is one frame, without ever
// blocking the loop that writes.
type frameWriter chan string

func (w frameWriter) Write(p []byte) (int, error) {
	select {
	case w <- string(p):
	default:
	}
	return len(p), nil
}

// watchFrames runs watch until it has written two frames, then ends its
// context and checks that it returns nil promptly.
func watchFrames(tb testing.TB, watch func(context.Context, io.Writer) error) []string {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := make(frameWriter, 2)
	done := make(chan error, 1)
	go func() { done <- watch(ctx, w) }()
	var frames []string
	for len(frames) < 2 {
		select {
		case f := <-w:
			frames = append(frames, f)
		case err := <-done:
			tb.Fatalf("watch returned %v after %d frames", err, len(frames))
		case <-time.After(testutil.Wait):
			tb.Fatalf("%d frames within %v, want 2", len(frames), testutil.Wait)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("watch returned %v once its context ended, want nil", err)
		}
	case <-time.After(testutil.Wait):
		tb.Fatalf("watch still running %v after its context ended", testutil.Wait)
	}
	return frames
}
