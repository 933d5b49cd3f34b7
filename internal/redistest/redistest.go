// Package redistest starts a real redis-server for tests, on a free port in
// a temporary directory, and stops it when the test ends. It never skips: a
// machine without redis-server fails the test with the command to fix it.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a running redis-server.
type Server struct {
	Addr string
	cmd  *exec.Cmd
}

// Start starts a redis-server and stops it at the end of the test.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return start(tb)
}

// start runs redis-server with args added to the defaults and waits until
// it answers PING.
func start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found: install it with `go tool task redis` (apt-get install redis-server): %v", err)
	}
	port := FreePort(tb)
	dir := tb.TempDir()
	cmd := exec.Command(bin, append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--save", "", "--appendonly", "no",
		"--logfile", dir + "/redis.log"}, args...)...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting redis-server: %v", err)
	}
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			tb.Fatalf("redis-server on %s did not answer within 10s (log: %s/redis.log)", s.Addr, dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts n cluster-enabled redis-servers, gives each an equal
// range of the 16,384 slots, joins them and waits until every node reports
// the cluster ok. They stop at the end of the test.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	cl := &Cluster{}
	for range n {
		dir := tb.TempDir()
		cl.Nodes = append(cl.Nodes, start(tb, "--cluster-enabled", "yes",
			"--cluster-config-file", dir+"/nodes.conf", "--cluster-node-timeout", "2000"))
	}
	ctx := context.Background()
	clients := make([]*redis.Client, n)
	for i, s := range cl.Nodes {
		clients[i] = s.Client(tb)
		lo, hi := i*16384/n, (i+1)*16384/n-1
		if err := clients[i].ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			tb.Fatalf("CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, s.Addr, err)
		}
	}
	for _, s := range cl.Nodes[1:] {
		host, port, _ := net.SplitHostPort(s.Addr)
		if err := clients[0].ClusterMeet(ctx, host, port).Err(); err != nil {
			tb.Fatalf("CLUSTER MEET %s: %v", s.Addr, err)
		}
	}
	Eventually(tb, 20*time.Second, func() error {
		for i, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)) {
				return fmt.Errorf("node %s not ready:\n%s", cl.Nodes[i].Addr, info)
			}
		}
		return nil
	})
	return cl
}

// URL is the redis+cluster:// URL of the cluster, as --redis takes it.
func (cl *Cluster) URL() string {
	return "redis+cluster://" + strings.Join(cl.addrs(), ",")
}

func (cl *Cluster) addrs() []string {
	addrs := make([]string, len(cl.Nodes))
	for i, s := range cl.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// Client returns a cluster client, closed at the end of the test.
func (cl *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.addrs()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a client of the server, closed at the end of the test.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Prefix returns a key prefix unique to the test.
func Prefix(tb testing.TB) string {
	return fmt.Sprintf("t%d", time.Now().UnixNano())
}

// Eventually polls fn every 10 ms until it returns nil or timeout passes,
// then fails the test with fn's last error.
func Eventually(tb testing.TB, timeout time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
