package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
)

// nginxBin finds nginx on PATH or where Debian puts it (/usr/sbin is not on
// every user's PATH). It fails the test when there is none: `go tool task
// nginx` installs it.
func nginxBin(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	tb.Fatal("nginx not found: install it with `go tool task nginx` (Debian: apt-get install nginx-light)")
	return ""
}

var (
	upstreamServer = regexp.MustCompile(`(?m)^(\s*)server 127\.0\.0\.1:808[1-3]( .*;)$`)
	listenLine     = regexp.MustCompile(`(?m)^(\s*)listen 8080;$`)
)

// startNginx runs nginx with deploy/nginx.conf, its three upstream servers
// replaced by backends and its listen port by a free one, until the test
// ends, and returns the address it listens on.
func startNginx(tb testing.TB, backends []string) string {
	tb.Helper()
	site, err := os.ReadFile("../../deploy/nginx.conf")
	if err != nil {
		tb.Fatal(err)
	}
	servers := upstreamServer.FindAllIndex(site, -1)
	if len(servers) != len(backends) {
		tb.Fatalf("deploy/nginx.conf lists %d upstream servers, the test has %d gateways", len(servers), len(backends))
	}
	i := 0
	site = upstreamServer.ReplaceAllFunc(site, func(line []byte) []byte {
		m := upstreamServer.FindSubmatch(line)
		i++
		return []byte(string(m[1]) + "server " + backends[i-1] + string(m[2]))
	})
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(tb))
	if !listenLine.Match(site) {
		tb.Fatal("deploy/nginx.conf has no `listen 8080;` line")
	}
	site = listenLine.ReplaceAll(site, []byte("${1}listen "+addr+";"))

	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "wsbus.conf"), site, 0o644); err != nil {
		tb.Fatal(err)
	}
	// What /etc/nginx/nginx.conf would hold around the site, with every
	// path in dir: nginx runs unprivileged here or as root, never as a
	// daemon, and leaves nothing behind.
	main := fmt.Sprintf(`worker_processes 1;
error_log %[1]s/error.log info;
pid %[1]s/nginx.pid;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/wsbus.conf;
}
`, dir)
	if os.Geteuid() == 0 {
		main = "user root;\n" + main // the workers read dir, which is root's
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		tb.Fatal(err)
	}
	bin := nginxBin(tb)
	if out, err := exec.Command(bin, "-t", "-p", dir, "-c", conf).CombinedOutput(); err != nil {
		tb.Fatalf("nginx -t refuses deploy/nginx.conf: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-g", "daemon off;")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its workers are killed with it if it does not stop by itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting nginx: %v", err)
	}
	tb.Cleanup(func() {
		// SIGTERM is nginx's fast shutdown: open WebSockets are cut, not
		// waited for as SIGQUIT would.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if tb.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			tb.Logf("nginx output:\n%s\nerror.log:\n%s", out.String(), log)
		}
	})
	waitOK(tb, "http://"+addr+"/healthz", 10*time.Second)
	return addr
}

// TestNginxDrain runs deploy/nginx.conf in a real nginx in front of three
// gateways, with resuming clients connected through it while events are
// published to every partition. One gateway is drained with SIGTERM: its
// clients, closed with 4002, reconnect to the same address and nginx
// takes them to the other two, where they resume with nothing lost and
// nothing twice.
func TestNginxDrain(t *testing.T) {
	f := newFleet(t, "a", "b", "c")
	f.waitBalanced(10*time.Second, "a", "b", "c")
	lb := startNginx(t, []string{f.nodes["a"].addr, f.nodes["b"].addr, f.nodes["c"].addr})
	through := func() []string { return []string{"ws://" + lb + "/v1/ws"} }
	// Plain HTTP through the balancer first, to every node: an upgrade
	// must not then be sent over a connection a request used before
	// (the gateway takes an upgrade only as a connection's first request).
	for range 6 {
		waitOK(t, "http://"+lb+"/healthz", 10*time.Second)
	}
	for i := range 6 {
		c, err := wstest.TryDial(through()[0])
		if err != nil {
			t.Fatalf("upgrade %d through nginx after plain requests: %v", i, err)
		}
		_ = c.Conn.Close()
	}

	var clients []*resumer
	for i := range 6 {
		r := newResumer(through, i, f.topics)
		clients = append(clients, r)
		go r.run(f.ctx)
	}
	connections := func(name string) int { return metric(t, f.nodes[name], "wsbus_ws_connections") }
	testutil.Eventually(t, 10*time.Second, func() error {
		a, b, c := connections("a"), connections("b"), connections("c")
		if a+b+c != len(clients) || b == 0 {
			return fmt.Errorf("connections a %d, b %d, c %d: want %d, some on b", a, b, c, len(clients))
		}
		return nil
	})
	onB := connections("b")
	pb := f.publish()
	// received waits until every client has had more events than in
	// counts, and returns how many each has now.
	received := func(counts []int) []int {
		t.Helper()
		now := make([]int, len(clients))
		testutil.Eventually(t, 10*time.Second, func() error {
			for i, r := range clients {
				r.mu.Lock()
				now[i] = 0
				for _, ids := range r.got {
					now[i] += len(ids)
				}
				r.mu.Unlock()
				if now[i] <= counts[i] {
					return fmt.Errorf("client %d has %d events, no more than before", i, now[i])
				}
			}
			return nil
		})
		return now
	}
	// The drain starts with events flowing to every client.
	counts := received(make([]int, len(clients)))

	b := f.nodes["b"]
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Wait(); err != nil {
		t.Fatalf("b exited with %v after SIGTERM", err)
	}
	testutil.Eventually(t, 15*time.Second, func() error {
		if a, c := connections("a"), connections("c"); a+c != len(clients) {
			return fmt.Errorf("after the drain a has %d and c %d connections, want %d", a, c, len(clients))
		}
		return nil
	})
	f.waitBalanced(15*time.Second, "a", "c")
	// And ends with them flowing again, through nginx to a and c.
	received(received(counts))
	f.verify(pb.finish(), clients)

	reconnected := 0
	for _, r := range clients {
		r.mu.Lock()
		if r.reconnects > 0 {
			reconnected++
		}
		r.mu.Unlock()
	}
	t.Logf("%d of %d clients were on the drained node; %d reconnected through nginx", onB, len(clients), reconnected)
	if reconnected < onB {
		t.Errorf("%d clients reconnected, but %d were on the drained node", reconnected, onB)
	}
}
