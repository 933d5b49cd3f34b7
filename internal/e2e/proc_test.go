package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/testutil"
)

var wsbusBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsbus-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wsbusBin = filepath.Join(dir, "wsbus")
	build := exec.Command("go", "build", "-o", wsbusBin, "../../app/wsbus")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building wsbus:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gateway is a running `wsbus serve` process.
type gateway struct {
	cmd  *exec.Cmd
	addr string
	url  string
	log  *syncBuffer
}

var servingAddr = regexp.MustCompile(`msg="wsbus serving" addr=(\S+)`)

// startGateway runs `wsbus serve --insecure` and waits until it listens.
func startGateway(tb testing.TB, redisURL, prefix string, args ...string) *gateway {
	tb.Helper()
	all := append([]string{"serve", "--insecure", "--redis", redisURL, "--prefix", prefix, "--listen", "127.0.0.1:0"}, args...)
	cmd := exec.Command(wsbusBin, all...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting wsbus serve: %v", err)
	}
	g := &gateway{cmd: cmd, log: &syncBuffer{}}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("wsbus serve %v log:\n%s", args, g.log.String())
		}
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			_, _ = g.log.Write([]byte(line + "\n"))
			if m := servingAddr.FindStringSubmatch(line); m != nil {
				found <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case g.addr = <-found:
	case <-time.After(15 * time.Second):
		tb.Fatalf("wsbus serve did not start within 15s")
	}
	g.url = "ws://" + g.addr + "/v1/ws"
	return g
}

func (g *gateway) kill(tb testing.TB) {
	tb.Helper()
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	_ = g.cmd.Wait()
}

func (g *gateway) pid() int { return g.cmd.Process.Pid }

// get returns the body of a GET of url.
func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// idleArgs start a gateway whose idle pool workers exit within 100 ms
// (instead of 10 s) and that serves pprof, for atRest.
var idleArgs = []string{"--worker-idle", "100ms", "--debug-addr", "127.0.0.1:0"}

var (
	pprofAddr  = regexp.MustCompile(`msg="pprof serving" addr=(\S+)`)
	partitions = regexp.MustCompile(`msg="wsbus serving" .*partitions=(\d+)`)
)

// atRest waits until the gateway, alone on its bus, owns every partition
// and its worker pool has no goroutine left, as at rest: g was started
// with idleArgs.
func (g *gateway) atRest(tb testing.TB) {
	tb.Helper()
	pprof, n := pprofAddr.FindStringSubmatch(g.log.String()), partitions.FindStringSubmatch(g.log.String())
	if pprof == nil || n == nil {
		tb.Fatal("the gateway logged no pprof address or partition count: start it with idleArgs")
	}
	testutil.Eventually(tb, testutil.Wait, func() error {
		if owned := strconv.Itoa(metric(tb, g, "wsbus_bus_partitions_owned")); owned != n[1] {
			return fmt.Errorf("%s of %s partitions owned", owned, n[1])
		}
		stacks, err := get(pprof[1] + "goroutine?debug=2")
		if err != nil {
			return err
		}
		if n := bytes.Count(stacks, []byte("ws.(*pool).worker(")); n > 0 {
			return fmt.Errorf("%d pool workers still running", n)
		}
		return nil
	})
}

// waitOK waits until a GET of url answers 200 OK.
func waitOK(tb testing.TB, url string, timeout time.Duration) {
	tb.Helper()
	testutil.Eventually(tb, timeout, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	})
}
