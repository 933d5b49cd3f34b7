package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/ws"
)

// TestServeReleasesItsPortOnError: a node that fails to start after it
// began listening (here ws.New refuses its configuration) closes its
// listener: the same port can be listened on again at once.
func TestServeReleasesItsPortOnError(t *testing.T) {
	srv := redistest.Start(t)
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	c := testConfig(t, srv, redistest.Prefix(t), "--listen", addr)
	c.SlowConsumer = slowConsumer(ws.OverflowDrop + 1) // no policy: ws.New refuses it
	err := Serve(context.Background(), c, slog.New(slog.DiscardHandler), func(string) { t.Error("the node started") })
	if err == nil || !strings.Contains(err.Error(), "Overflow") {
		t.Fatalf("Serve = %v, want ws.New's refusal", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("after the failed start, listening on its port again: %v", err)
	}
	_ = ln.Close()
}

// TestServeLeavesNoGoroutine: a node that served clients (a subscription,
// live events, a lagging catch-up's worth of pub/sub, the pprof listener,
// its canary) and was stopped has ended every goroutine it started: the
// owner's pipelines, the gateway's pub/sub owners and catch-ups, the
// WebSocket server's workers, epoll loop and HTTP server, the canary's
// client and publisher.
func TestServeLeavesNoGoroutine(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	rdb := srv.Client(t)
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	node := startNode(t, testConfig(t, srv, prefix, "--debug-addr", "127.0.0.1:0", "--canary-interval", "100ms"))
	b := &testBus{Bus: bustest.On(t, rdb, prefix), srv: srv, prefix: prefix, node: node}
	c := wstest.Dial(t, node.url+"?topic=news")
	c.Expect("subscribed", testutil.Wait)
	for i := range 5 {
		b.XAdd(t, "news", strconv.Itoa(i))
	}
	c.Events(5, testutil.Wait)
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := sumOf(canaryMetric(t, node.addr, "wsbus_canary_received_total")); got == 0 {
			return fmt.Errorf("the canary received nothing yet")
		}
		return nil
	})
	node.stop() // drains c with 4002
	if code := c.CloseCode(testutil.Wait); code != 4002 {
		t.Fatalf("close code %d, want 4002", code)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if now := runtime.NumGoroutine(); now > before {
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			return fmt.Errorf("%d goroutines after the node stopped, %d before:\n%s", now, before, stacks.String())
		}
		return nil
	})
}

// TestCollectOften: serve collects at gcPercent unless the environment's
// GOGC says otherwise.
func TestCollectOften(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	collectOften()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("GOGC unset: the collector's target is %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "200") // the runtime read it at start: left alone
	collectOften()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC set: the collector's target is %d, want it left at 100", got)
	}
}
