package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
)

// TestJSClient runs the node --test suite of the npm package wsbus-client
// (clients/js/test) against the binary TestMain built and a redis-server of
// its own, so `go tool task test` runs it with one command and one build.
// The suite starts, kills, stops and drains gateways itself (JSCLIENT_GATEWAY),
// each with its own key prefix on that Redis (JSCLIENT_REDIS): resume after
// SIGKILL, 4002, 4001, 4003 and token refresh, a reload from the store,
// since:"acked", a gap after trimmed history, and the npm pack tarball.
func TestJSClient(t *testing.T) {
	dir, err := filepath.Abs("../../clients/js")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules/ws")); err != nil {
		t.Fatalf("Node's ws package is missing in clients/js: run `go tool task test` (it runs npm ci there): %v", err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "test", "*.test.js"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files in clients/js/test: %v", err)
	}
	srv := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"--test", "--test-reporter=spec"}, files...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "JSCLIENT_GATEWAY="+wsbusBin, "JSCLIENT_REDIS="+srv.URL(), "NO_COLOR=1")
	// The suite's gateways are node's children: on a timeout, kill the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test clients/js/test: %v\n%s", err, out)
	}
	// Say what was skipped (the lag-mode test, before the gateway has
	// --slow-consumer): a skip must not pass unseen.
	for _, m := range skipped.FindAllString(string(out), -1) {
		t.Log("skipped: " + m)
	}
	t.Log(string(summary.Find(out)))
}

var (
	skipped = regexp.MustCompile(`(?m)^﹣ .*$`)
	summary = regexp.MustCompile(`(?m)^ℹ tests \d+(\n.*)*`)
)
