package e2e

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
)

// operatorArgs serve a gateway that is not --insecure (startGateway gives
// it; the later flag wins), with the operator key opkey.
var operatorArgs = []string{"--insecure=false", "--jwt-secret", "status-test-secret", "--publish-key", "opkey"}

// TestStatusPageInChromium opens /status?key=opkey in headless Chromium
// on a fleet of one node and waits until the page lists every partition
// with that node as owner; a second node joins and the page, with no
// reload, shows the partitions shared between the two. The screenshot goes
// to the test's artifact dir: `go test -artifacts -outputdir DIR` keeps it
// for a person to look at.
func TestStatusPageInChromium(t *testing.T) {
	needChromium(t)
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	a := startGateway(t, srv.URL(), prefix, append([]string{"--node-id", "gw-a", "--lease-ttl", "2s"}, operatorArgs...)...)
	shot := filepath.Join(t.ArtifactDir(), "status.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	page := exec.CommandContext(ctx, "node", "node/status.mjs", "http://"+a.addr+"/status?key=opkey", "64", "gw-a", "gw-b", shot)
	var stderr strings.Builder
	page.Stderr = &stderr
	stdout, err := page.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	lines := bufio.NewScanner(stdout)
	expectLine := func(want string) {
		t.Helper()
		if !lines.Scan() || lines.Text() != want {
			_ = page.Process.Kill()
			_ = page.Wait()
			t.Fatalf("status page: want %q, got %q\n%s", want, lines.Text(), stderr.String())
		}
	}
	expectLine("ONE NODE")
	startGateway(t, srv.URL(), prefix, append([]string{"--node-id", "gw-b", "--lease-ttl", "2s"}, operatorArgs...)...)
	expectLine("TWO NODES")
	if err := page.Wait(); err != nil {
		t.Fatalf("status page in Chromium: %v\n%s", err, stderr.String())
	}
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot: %v", err)
	}
	t.Logf("screenshot: %s", shot)
}

// needChromium fails the test when headless Chromium or playwright-core,
// which drives it, is not installed.
func needChromium(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("chromium"); err != nil {
		tb.Fatalf("chromium not found: install it with `go tool task chromium` (apt-get install chromium): %v", err)
	}
	if _, err := os.Stat("node/node_modules/playwright-core"); err != nil {
		tb.Fatalf("playwright-core is missing: run `go tool task test` (it runs npm ci in internal/e2e/node): %v", err)
	}
}

// TestStatusWatchStopsOnSignal runs `wsbus status --watch` with its
// output on a pipe: it prints a frame every interval, each after a blank
// line, and exits 0 at once on SIGINT (Ctrl-C) or SIGTERM.
func TestStatusWatchStopsOnSignal(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	startGateway(t, srv.URL(), prefix, "--node-id", "gw-a", "--partitions", "4")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(wsbusBin, "status", "--watch", "--interval", "100ms", "--redis", srv.URL(), "--prefix", prefix)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			frames := readFrames(t, out, 2)
			if !strings.Contains(frames, "\n\nEvery 100ms: wsbus status at ") || !strings.Contains(frames, "\ngw-a ") {
				t.Fatalf("two frames, a blank line apart, showing gw-a; got:\n%s", frames)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() {
				_, _ = io.Copy(io.Discard, out)
				exited <- cmd.Wait()
			}()
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("after %v: %v, want exit 0", sig, err)
				}
			case <-time.After(testutil.Wait):
				t.Fatalf("still running %v after %v", testutil.Wait, sig)
			}
		})
	}
}

// readFrames reads out until it has seen n frame headers, within wait.
func readFrames(tb testing.TB, out io.Reader, n int) string {
	tb.Helper()
	text := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(out)
		for seen := 0; seen <= n && sc.Scan(); {
			if strings.HasPrefix(sc.Text(), "Every ") {
				seen++
			}
			if seen <= n {
				b.WriteString(sc.Text() + "\n")
			}
		}
		text <- b.String()
	}()
	select {
	case s := <-text:
		return s
	case <-time.After(testutil.Wait):
		tb.Fatalf("%d frames of wsbus status --watch not printed within %v", n, testutil.Wait)
		return ""
	}
}
