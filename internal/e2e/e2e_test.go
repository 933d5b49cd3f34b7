package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	wsbusclient "github.com/wsbus/wsbus/clients/js"
	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// publisher XADDs the way any service does: hash the topic, add to the
// partition's ingress.
type publisher struct{ *bustest.Bus }

func newPublisher(tb testing.TB, srv *redistest.Server, prefix string) *publisher {
	tb.Helper()
	return publisherOn(tb, srv.Client(tb), prefix)
}

// publisherOn publishes through rdb, a single Redis's client or a
// cluster's.
func publisherOn(tb testing.TB, rdb redis.UniversalClient, prefix string) *publisher {
	tb.Helper()
	return &publisher{bustest.On(tb, rdb, prefix)}
}

// TestNodeClientResume drives the binary with Node's ws package: subscribe,
// receive, disconnect, events published while away, resume with the
// cursor and epoch, receive exactly the missed ones, then live ones.
func TestNodeClientResume(t *testing.T) {
	script, _ := filepath.Abs("node/resume.mjs")
	if _, err := os.Stat("node/node_modules/ws"); err != nil {
		t.Fatalf("Node's ws package is missing: run `go tool task test` (it runs npm ci in internal/e2e/node): %v", err)
	}
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)

	cmd := exec.Command("node", script, g.url, "room:1", "3", "7")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("node client exited early")
			}
			if strings.HasPrefix(l, "FAIL") {
				t.Fatalf("node client: %s", l)
			}
			return l
		case <-time.After(testutil.Wait):
			t.Fatal("node client said nothing within the timeout")
		}
		return ""
	}
	expectEvent := func(id, data string) {
		t.Helper()
		if got, want := next(), "EVENT "+id+" "+data; got != want {
			t.Fatalf("node client printed %q, want %q", got, want)
		}
	}

	if l := next(); l != "SUBSCRIBED" {
		t.Fatalf("node client printed %q, want SUBSCRIBED", l)
	}
	for i := range 3 {
		id := pub.XAdd(t, "room:1", fmt.Sprintf(`{"n":%d}`, i))
		expectEvent(id, fmt.Sprintf(`{"n":%d}`, i))
	}
	if l := next(); !strings.HasPrefix(l, "AWAY ") {
		t.Fatalf("node client printed %q, want AWAY", l)
	}
	var missed []string
	for i := 3; i < 8; i++ {
		missed = append(missed, pub.XAdd(t, "room:1", fmt.Sprintf("text %d", i)))
	}
	fmt.Fprintln(stdin, "GO")
	if l := next(); l != "SUBSCRIBED true" {
		t.Fatalf("node client printed %q, want SUBSCRIBED true", l)
	}
	for i, id := range missed {
		expectEvent(id, fmt.Sprintf(`"text %d"`, i+3))
	}
	for i := 8; i < 10; i++ {
		id := pub.XAdd(t, "room:1", strconv.Itoa(i))
		expectEvent(id, strconv.Itoa(i))
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node client exited with %v", err)
	}
}

// TestRedisCLIQuickStart is the README's first run: a plain redis-cli XADD
// reaches a subscribed client.
func TestRedisCLIQuickStart(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found (it comes with redis-server): %v", err)
	}
	srv := redistest.Start(t)
	g := startGateway(t, srv.URL(), "wsbus")
	c := wstest.Dial(t, g.url+"?topic=demo")
	c.Expect("subscribed", testutil.Wait)
	host, port, _ := strings.Cut(srv.Addr, ":")
	p := streams.Partition("demo", 64)
	out, err := exec.Command(cli, "-h", host, "-p", port, "XADD", fmt.Sprintf("wsbus:{%d}:in", p), "*", "topic", "demo", "data", `{"text":"hi"}`).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli: %v: %s", err, out)
	}
	ev := c.Events(1, testutil.Wait)[0]
	if ev.ID != strings.TrimSpace(string(out)) || string(ev.Data) != `{"text":"hi"}` {
		t.Fatalf("event = %+v, want id %s", ev, out)
	}
	resp, err := http.Get("http://" + g.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "/v1/ws") {
		t.Fatalf("demo page = %d, %d bytes: want the page that connects to /v1/ws", resp.StatusCode, len(page))
	}
	resp, err = http.Get("http://" + g.addr + "/wsbus-client.js")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") || !bytes.Equal(script, wsbusclient.Source) {
		t.Fatalf("/wsbus-client.js = %d %q, %d bytes: want clients/js/index.js as JavaScript", resp.StatusCode, resp.Header.Get("Content-Type"), len(script))
	}
}

// TestKilledNodeLosesNothing SIGKILLs the only gateway while events are
// published over several topics and starts another one: after resuming,
// the client has every event exactly once and in order, and no history
// stream holds an event twice.
func TestKilledNodeLosesNothing(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	first := startGateway(t, srv.URL(), prefix, "--node-id", "first", "--lease-ttl", "1s")
	pub := newPublisher(t, srv, prefix)
	topics := []string{"k0", "k1", "k2"}
	clients := make(map[string]*wstest.Client)
	for _, topic := range topics {
		clients[topic] = wstest.Dial(t, first.url+"?topic="+topic+"&since=0")
		clients[topic].Expect("subscribed", testutil.Wait)
	}

	pb := startPublishing(t, pub, topics, 500*time.Microsecond, false)

	// Read what arrives before the kill, as a client would.
	got := make(map[string][]string)
	pb.more(t, 300) // load before the kill
	first.kill(t)
	for _, topic := range topics {
		for {
			m, err := clients[topic].TryNext(testutil.Wait)
			if err != nil {
				break // the connection died with the node
			}
			if m.Type == "event" {
				got[topic] = append(got[topic], m.ID)
			}
		}
	}
	pb.more(t, 500) // events pile up with no owner
	second := startGateway(t, srv.URL(), prefix, "--node-id", "second", "--lease-ttl", "1s")
	pb.more(t, 300) // load after the new owner started
	published := pb.finish()

	for _, topic := range topics {
		want := published[topic]
		since := "0"
		if n := len(got[topic]); n > 0 {
			since = got[topic][n-1]
		}
		c := wstest.Dial(t, second.url+"?topic="+topic+"&since="+since)
		if sub := c.Expect("subscribed", testutil.Wait); !sub.Recovered {
			t.Fatalf("%s: resumed with recovered=false", topic)
		}
		for _, ev := range c.Events(len(want)-len(got[topic]), testutil.Wait) {
			got[topic] = append(got[topic], ev.ID)
		}
		c.ExpectQuiet(100 * time.Millisecond)
		if !slices.Equal(got[topic], want) {
			t.Fatalf("%s: client has %d events, want the %d published, once each and in order", topic, len(got[topic]), len(want))
		}
		msgs, err := pub.Redis.XRange(context.Background(), pub.Keys.Topic(streams.Partition(topic, pub.N), topic), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(want) {
			t.Fatalf("%s: history holds %d entries, want %d", topic, len(msgs), len(want))
		}
	}
}

// goroutines reads go_goroutines from the gateway's /metrics.
func goroutines(tb testing.TB, g *gateway) int {
	tb.Helper()
	return metric(tb, g, "go_goroutines")
}

func openFDs(tb testing.TB, pid int) int {
	tb.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	return len(entries)
}

// TestIdleConnectionsCostNoGoroutine holds 2,000 idle subscribed
// connections: the gateway's goroutines do not grow with them and it has
// exactly one fd per connection.
func TestIdleConnectionsCostNoGoroutine(t *testing.T) {
	const conns = 2000
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, idleArgs...)
	// Warm up: one subscribed connection creates the worker pool, the
	// pub/sub connections and the HTTP server's goroutines.
	warm := wstest.Dial(t, g.url+"?topic=shared")
	warm.Expect("subscribed", testutil.Wait)
	g.atRest(t)
	baseG, baseFD := goroutines(t, g), openFDs(t, g.pid())

	clients := make([]*wstest.Client, conns)
	for i := range clients {
		topic := "shared"
		if i%2 == 1 {
			topic = "own:" + strconv.Itoa(i%64) // spread over partitions
		}
		clients[i] = wstest.Dial(t, g.url+"?topic="+topic)
		clients[i].Expect("subscribed", testutil.Wait)
	}
	g.atRest(t) // every worker that served them is idle and gone
	nowG, nowFD := goroutines(t, g), openFDs(t, g.pid())
	t.Logf("goroutines %d -> %d, fds %d -> %d with %d idle connections", baseG, nowG, baseFD, nowFD, conns)
	if nowG-baseG > 40 {
		t.Errorf("goroutines grew by %d with %d idle connections; want no goroutine per connection", nowG-baseG, conns)
	}
	// One fd per connection, plus at most one pub/sub connection per
	// partition the new topics landed in.
	if extra := nowFD - baseFD - conns; extra < 0 || extra > 64 {
		t.Errorf("fds grew by %d for %d connections: want one per connection", nowFD-baseFD, conns)
	}

	for _, c := range clients {
		_ = c.Conn.Close()
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if fd := openFDs(t, g.pid()); fd > baseFD+64 {
			return fmt.Errorf("%d fds open after the clients left, baseline %d", fd, baseFD)
		}
		return nil
	})
}

// TestDemoPageInChromium loads the demo page, built on wsbus-client
// (clients/js, served at /wsbus-client.js), in headless Chromium: a plain
// XADD shows up, events published while the page was disconnected are
// recovered on reconnect and counted by the library, a dropped connection
// comes back by itself, a reload resumes from localStorage, and its publish
// form works.
func TestDemoPageInChromium(t *testing.T) {
	needChromium(t)
	srv := redistest.Start(t)
	g := startGateway(t, srv.URL(), "wsbus")
	_, port, _ := strings.Cut(srv.Addr, ":")
	shot := filepath.Join(t.TempDir(), "demo.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", "node/demo.mjs", "http://"+g.addr+"/", port, shot).CombinedOutput()
	if err != nil {
		t.Fatalf("demo page in Chromium: %v\n%s", err, out)
	}
	for _, want := range []string{"LIVE ", "RESUMED ", "DROPPED", "RELOADED ", "PUBLISHED"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot: %v", err)
	}
}

// TestTailResumesAcrossRestart runs `wsbus tail`: it prints live events,
// survives the gateway being killed and replaced on the same address, and
// prints the events published meanwhile, each once, in order.
func TestTailResumesAcrossRestart(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	listen := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	g := startGateway(t, srv.URL(), prefix, "--listen", listen, "--node-id", "a", "--lease-ttl", "1s")
	pub := newPublisher(t, srv, prefix)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tail := exec.CommandContext(ctx, wsbusBin, "tail", "--url", g.url, "--count", "6", "alerts")
	var out, logs syncBuffer
	tail.Stdout, tail.Stderr = &out, &logs
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if !strings.Contains(logs.String(), "# subscribed alerts") {
			return fmt.Errorf("tail has not subscribed; it said %q", logs.String())
		}
		return nil
	})
	var ids []string
	for i := range 3 {
		ids = append(ids, pub.XAdd(t, "alerts", strconv.Itoa(i)))
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if strings.Count(out.String(), "\n") < 3 {
			return fmt.Errorf("tail printed %q", out.String())
		}
		return nil
	})
	g.kill(t)
	for i := 3; i < 6; i++ {
		ids = append(ids, pub.XAdd(t, "alerts", strconv.Itoa(i)))
	}
	startGateway(t, srv.URL(), prefix, "--listen", listen, "--node-id", "b", "--lease-ttl", "1s")
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail: %v\n%s", err, logs.String())
	}
	var want strings.Builder
	for i, id := range ids {
		fmt.Fprintf(&want, "alerts %s %d\n", id, i)
	}
	if out.String() != want.String() {
		t.Fatalf("tail printed\n%s\nwant\n%s", out.String(), want.String())
	}
	if !strings.Contains(logs.String(), "recovered=true") || !strings.Contains(logs.String(), "reconnecting") {
		t.Fatalf("tail's log does not show a reconnect and a recovered resume:\n%s", logs.String())
	}
}

// syncBuffer collects a child process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSIGTERMDrains stops a gateway with SIGTERM: its leases are released
// at once, its clients are closed with 4002, and it exits cleanly.
func TestSIGTERMDrains(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, "--lease-ttl", "30s")
	pub := newPublisher(t, srv, prefix)
	c := wstest.Dial(t, g.url+"?topic=bye")
	c.Expect("subscribed", testutil.Wait)
	owners := func() int {
		n := 0
		for p := range pub.N {
			if pub.Redis.Exists(context.Background(), pub.Keys.Owner(p)).Val() == 1 {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, testutil.Wait, func() error {
		if n := owners(); n != pub.N {
			return fmt.Errorf("%d of %d partitions have an owner", n, pub.N)
		}
		return nil
	})
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := c.CloseCode(testutil.Wait); code != 4002 {
		t.Fatalf("close code %d, want 4002", code)
	}
	if err := g.cmd.Wait(); err != nil {
		t.Fatalf("wsbus serve exited with %v after SIGTERM", err)
	}
	if n := owners(); n != 0 {
		t.Fatalf("%d leases left after the drain (TTL 30s): want them released", n)
	}
}

// TestRedisGoesBackInTime: Redis loses the newest writes under a running
// gateway (SAVE, then DEBUG RELOAD NOSAVE: a restart from an older
// snapshot; a failover before replication does the same). A client that
// had seen the lost event is closed with 4001 when the next event takes
// its seq, rather than handed it as if it followed; a client that resumes
// from before it with the old epoch is told recovered:false, with a new
// epoch and what is retained, rather than silently missing it.
func TestRedisGoesBackInTime(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix)
	pub := newPublisher(t, srv, prefix)
	rdb := srv.Client(t)
	ctx := context.Background()

	live := wstest.Dial(t, g.url+"?topic=room")
	epoch := live.Expect("subscribed", testutil.Wait).Epoch
	kept := pub.XAdd(t, "room", "1")
	if m := live.Events(1, testutil.Wait)[0]; m.ID != kept {
		t.Fatalf("event %s, want %s", m.ID, kept)
	}
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	lost := pub.XAdd(t, "room", "2")
	if m := live.Events(1, testutil.Wait)[0]; m.ID != lost {
		t.Fatalf("event %s, want %s", m.ID, lost)
	}
	time.Sleep(5 * time.Millisecond) // the next ID above the lost one, as after a real failover
	if err := rdb.Do(ctx, "DEBUG", "RELOAD", "NOSAVE").Err(); err != nil {
		t.Fatal(err)
	}
	after := pub.XAdd(t, "room", "3")
	// Event 3 took the lost event's seq under a new epoch: the live
	// subscriber is not handed it as if it followed 2, it is closed to
	// resume.
	if code := live.CloseCode(testutil.Wait); code != 4001 {
		t.Fatalf("live subscriber closed with %d after Redis lost event 2, want 4001", code)
	}

	back := wstest.Dial(t, g.url)
	back.Subscribe("room", kept, epoch)
	sub := back.Expect("subscribed", testutil.Wait)
	if sub.Recovered || sub.Epoch == epoch || sub.Epoch == "" {
		t.Fatalf("resume from %s after the loss: recovered %v, epoch %q (was %q); want recovered:false and a new epoch", kept, sub.Recovered, sub.Epoch, epoch)
	}
	var ids []string
	for _, m := range back.Events(2, testutil.Wait) {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []string{kept, after}) {
		t.Fatalf("events %v, want what is retained: %s, %s", ids, kept, after)
	}
}
