package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
)

// baseline is a gateway's open fds and goroutines at rest, and of its
// fds its connections to Redis, counted apart: the Redis client's pools
// open more when the gateway's work overlaps under a burst (the owner's
// pipelines, the subscriptions' reads, the canary) and keep them idle,
// which is no leak.
type baseline struct{ fds, redis, goroutines int }

// redisSlack is how many more connections to Redis than at rest are no
// leak: the main pool keeps up to 16 idle (app's idle), its pipeline
// pool up to 10 (go-redis's default).
const redisSlack = 16 + 10

func measure(tb testing.TB, g *gateway) baseline {
	tb.Helper()
	redis := redisConns(tb, g)
	if redis == 0 {
		tb.Fatal("found no connection of the gateway to its Redis: the count of them is wrong")
	}
	return baseline{fds: openFDs(tb, g.pid()) - redis, redis: redis, goroutines: goroutines(tb, g)}
}

// redisConns counts the gateway's TCP connections to the Redis of its
// --redis URL, from its fds' socket inodes and the TCP tables of its
// network namespace.
func redisConns(tb testing.TB, g *gateway) int {
	tb.Helper()
	var port int
	for i, a := range g.cmd.Args {
		if a == "--redis" && i+1 < len(g.cmd.Args) {
			u, err := url.Parse(g.cmd.Args[i+1])
			if err != nil || u.Port() == "" {
				tb.Fatalf("the gateway's --redis %q has no port: %v", g.cmd.Args[i+1], err)
			}
			port, _ = strconv.Atoi(u.Port())
		}
	}
	if port == 0 {
		tb.Fatal("the gateway was started without --redis")
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", g.pid())
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		tb.Fatal(err)
	}
	sockets := make(map[string]bool, len(entries))
	for _, e := range entries {
		link, err := os.Readlink(fdDir + "/" + e.Name())
		if err == nil && strings.HasPrefix(link, "socket:[") {
			sockets[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	remote := fmt.Sprintf(":%04X", port)
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", g.pid(), table))
		if errors.Is(err, fs.ErrNotExist) {
			continue // no IPv6 on this kernel
		}
		if err != nil {
			tb.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) > 9 && strings.HasSuffix(f[2], remote) && sockets[f[9]] {
				n++
			}
		}
	}
	return n
}

// expectBaseline waits until the gateway is back at b (small slack for the
// pub/sub and worker goroutines that come and go) with no socket left in
// CLOSE-WAIT.
func expectBaseline(tb testing.TB, g *gateway, b baseline) {
	tb.Helper()
	testutil.Eventually(tb, 20*time.Second, func() error {
		now := measure(tb, g)
		if now.fds > b.fds+2 || now.redis > b.redis+redisSlack || now.goroutines > b.goroutines+10 {
			return fmt.Errorf("fds %d (baseline %d) and connections to Redis %d (baseline %d), goroutines %d (baseline %d)",
				now.fds, b.fds, now.redis, b.redis, now.goroutines, b.goroutines)
		}
		if n := closeWait(tb, g.addr); n > 0 {
			return fmt.Errorf("%d sockets of the gateway in CLOSE-WAIT", n)
		}
		return nil
	})
}

// closeWait counts sockets on addr's port in CLOSE-WAIT (state 08).
func closeWait(tb testing.TB, addr string) int {
	tb.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	hexPort := fmt.Sprintf(":%04X ", p)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1]+" ", hexPort) && f[3] == "08" {
			n++
		}
	}
	return n
}

// TestHalfSentHandshakes opens 1,000 connections that never finish their
// handshake: a real client still connects at once, they are cut at the
// handshake timeout, and nothing leaks.
func TestHalfSentHandshakes(t *testing.T) {
	srv := redistest.Start(t)
	g := startGateway(t, srv.URL(), redistest.Prefix(t), append(idleArgs, "--handshake-timeout", "2s")...)
	warm := wstest.Dial(t, g.url+"?topic=w")
	warm.Expect("subscribed", testutil.Wait)
	_ = warm.Conn.Close()
	g.atRest(t)
	base := measure(t, g)

	const n = 1000
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		fmt.Fprint(c, "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n") // and never the rest
	}
	start := time.Now()
	real := wstest.Dial(t, g.url+"?topic=real")
	real.Expect("subscribed", testutil.Wait)
	if d := time.Since(start); d > time.Second {
		t.Errorf("a real client needed %v to connect beside %d half-sent handshakes", d, n)
	}
	_ = real.Conn.Close()

	var cut atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(c); err == nil {
				cut.Add(1) // EOF: the server closed it
			}
			_ = c.Close()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d half-sent handshakes cut after %v (timeout 2s)", cut.Load(), took.Round(10*time.Millisecond))
	if cut.Load() != n || took > 5*time.Second {
		t.Errorf("%d of %d cut within %v, want all within about the 2s handshake timeout", cut.Load(), n, took)
	}
	expectBaseline(t, g, base)
}

// TestUpgradeBurstIsPaced opens 5,000 WebSocket connections at once
// against --upgrade-rate 2000: all are admitted, none refused or failed,
// at about the configured rate.
func TestUpgradeBurstIsPaced(t *testing.T) {
	const n, rate, burst = 5000, 2000, 100
	srv := redistest.Start(t)
	g := startGateway(t, srv.URL(), redistest.Prefix(t), append(idleArgs, "--upgrade-rate", strconv.Itoa(rate), "--upgrade-burst", strconv.Itoa(burst))...)
	g.atRest(t)
	base := measure(t, g)

	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 1000) // the client side dials 1,000 at a time
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, _, _, err := ws.Dial(ctx, g.url)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 3 {
			t.Errorf("upgrade failed: %v", err)
		}
	}
	achieved := float64(n) / took.Seconds()
	t.Logf("%d upgrades in %v: %.0f/s against --upgrade-rate %d (burst %d), %d failed", n, took.Round(10*time.Millisecond), achieved, rate, burst, failed)
	if achieved > rate*1.1 {
		t.Errorf("admitted %.0f upgrades/s, over the configured %d", achieved, rate)
	}
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
	expectBaseline(t, g, base)
}

// TestSlowReaderIsCut subscribes a client that stops reading while events
// pour in to a gateway with --slow-consumer close: it is closed with 4001
// once its queue passes --max-queue, the gateway's memory stays flat, and
// the client then resumes losing nothing. (The default, lag, is
// TestSlowReaderLags.)
func TestSlowReaderIsCut(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	g := startGateway(t, srv.URL(), prefix, "--slow-consumer", "close", "--max-queue", "262144", "--history-len", "7000")
	pub := newPublisher(t, srv, prefix)
	rssBefore := rss(t, g.pid())

	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = fmt.Fprintf(conn, "GET /v1/ws?topic=firehose HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	f, err := ws.ReadFrame(br)
	if err != nil || !strings.Contains(string(f.Payload), "subscribed") {
		t.Fatalf("first frame %q, %v", f.Payload, err)
	}

	// Stop reading; publish 6,000 events of 4 KiB (24 MiB), more than the
	// kernel's socket buffers on both sides hold.
	payload := strings.Repeat("x", 4096)
	var ids []string
	for range 6000 {
		ids = append(ids, pub.XAdd(t, "firehose", payload))
	}
	peak := rss(t, g.pid())
	t.Logf("gateway RSS %d KiB before, %d KiB after 24 MiB were published to a stalled client", rssBefore>>10, peak>>10)
	if peak-rssBefore > 24<<20 {
		t.Errorf("gateway RSS grew by %d MiB for a stalled client, want it flat (queue bound 256 KiB)", (peak-rssBefore)>>20)
	}

	// Now read: the events that got through, then close 4001.
	var got []string
	code := 0
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for code == 0 {
		f, err := ws.ReadFrame(br)
		if err != nil {
			t.Fatalf("reading after the stall: %v (after %d events)", err, len(got))
		}
		switch f.Header.OpCode {
		case ws.OpClose:
			c, _ := ws.ParseCloseFrameData(f.Payload)
			code = int(c)
		case ws.OpText:
			var m wstest.Message
			if err := json.Unmarshal(f.Payload, &m); err == nil && m.Type == "event" {
				got = append(got, m.ID)
			}
		}
	}
	if code != 4001 {
		t.Fatalf("closed with %d, want 4001", code)
	}
	if len(got) >= len(ids) {
		t.Fatalf("the stalled client received all %d events: the queue bound never applied", len(got))
	}
	// Resume from the last event processed: nothing is lost.
	beforeCut := len(got)
	since := "0"
	if len(got) > 0 {
		since = got[len(got)-1]
	}
	c := wstest.Dial(t, g.url+"?topic=firehose&since="+since)
	if sub := c.Expect("subscribed", testutil.Wait); !sub.Recovered {
		t.Fatalf("resume after 4001 not recovered")
	}
	for _, ev := range c.Events(len(ids)-len(got), testutil.Wait) {
		got = append(got, ev.ID)
	}
	for i := range ids {
		if got[i] != ids[i] {
			t.Fatalf("event %d = %s, want %s", i, got[i], ids[i])
		}
	}
	t.Logf("cut with 4001 after %d of %d events; resumed the other %d", beforeCut, len(ids), len(ids)-beforeCut)
}

// rss reads a process's resident set size in bytes.
func rss(tb testing.TB, pid int) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}
