// Package redistest starts a real redis-server for tests, on a free port in
// a temporary directory, and stops it when the test ends. It never skips: a
// machine without redis-server fails the test with the command to fix it.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
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

// Start starts a redis-server, with args added to the defaults (say,
// "--enable-debug-command", "yes"), waits until it answers PING, and stops
// it at the end of the test.
func Start(tb testing.TB, args ...string) *Server {
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

// Cluster is a Redis Cluster: masters, each with its replicas.
type Cluster struct {
	Masters  []*Server
	Replicas [][]*Server // by master
}

// StartCluster starts masters cluster-enabled redis-servers, gives each an
// equal range of the 16,384 slots and replicas replicas of its own, joins
// them and waits until every node reports the cluster ok and every replica
// is in sync. A master that stops answering for 2 s is failed over. They
// stop at the end of the test.
func StartCluster(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	cl := &Cluster{Replicas: make([][]*Server, masters)}
	node := func() *Server {
		dir := tb.TempDir()
		return Start(tb, "--cluster-enabled", "yes",
			"--cluster-config-file", dir+"/nodes.conf", "--cluster-node-timeout", "2000")
	}
	ctx := context.Background()
	for i := range masters {
		cl.Masters = append(cl.Masters, node())
		for range replicas {
			cl.Replicas[i] = append(cl.Replicas[i], node())
		}
	}
	all := cl.nodes()
	clients := map[*Server]*redis.Client{}
	for _, s := range all {
		clients[s] = s.Client(tb)
	}
	for i, m := range cl.Masters {
		lo, hi := i*16384/masters, (i+1)*16384/masters-1
		if err := clients[m].ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			tb.Fatalf("CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, m.Addr, err)
		}
	}
	for _, s := range all[1:] {
		host, port, _ := net.SplitHostPort(s.Addr)
		if err := clients[all[0]].ClusterMeet(ctx, host, port).Err(); err != nil {
			tb.Fatalf("CLUSTER MEET %s: %v", s.Addr, err)
		}
	}
	for i, m := range cl.Masters {
		id, err := clients[m].ClusterMyID(ctx).Result()
		if err != nil {
			tb.Fatalf("CLUSTER MYID on %s: %v", m.Addr, err)
		}
		for _, r := range cl.Replicas[i] {
			// The replica must have heard of its master by gossip first.
			Eventually(tb, 20*time.Second, func() error { return clients[r].ClusterReplicate(ctx, id).Err() })
		}
	}
	Eventually(tb, 30*time.Second, func() error {
		for _, s := range all {
			info, err := clients[s].ClusterInfo(ctx).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(all))) {
				return fmt.Errorf("node %s not ready:\n%s", s.Addr, info)
			}
		}
		for _, rs := range cl.Replicas {
			for _, r := range rs {
				repl, err := clients[r].Info(ctx, "replication").Result()
				if err != nil {
					return err
				}
				if !strings.Contains(repl, "master_link_status:up") {
					return fmt.Errorf("replica %s not in sync:\n%s", r.Addr, repl)
				}
			}
		}
		return nil
	})
	return cl
}

func (cl *Cluster) nodes() []*Server {
	out := slices.Clone(cl.Masters)
	for _, rs := range cl.Replicas {
		out = append(out, rs...)
	}
	return out
}

// URL is the redis+cluster:// URL of the cluster, as --redis takes it.
func (cl *Cluster) URL() string {
	return "redis+cluster://" + strings.Join(cl.addrs(), ",")
}

func (cl *Cluster) addrs() []string {
	var addrs []string
	for _, s := range cl.nodes() {
		addrs = append(addrs, s.Addr)
	}
	return addrs
}

// Client returns a cluster client, closed at the end of the test.
func (cl *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	// Reload the slot map often, as wsbus does, so that a failover is seen
	// within seconds rather than go-redis's default minute.
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.addrs(), ClusterStateReloadInterval: time.Second})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill stops the server at once, as a crash would.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
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

// LoadScript loads s with SCRIPT LOAD, which compiles it without running
// it, and fails the test on a Lua error, or when Redis names the script by
// another SHA than s.Hash(), the one EVALSHA will ask for.
func LoadScript(tb testing.TB, rdb redis.Scripter, s *redis.Script) {
	tb.Helper()
	sha, err := s.Load(context.Background(), rdb).Result()
	if err != nil {
		tb.Fatalf("SCRIPT LOAD: %v", err)
	}
	if sha != s.Hash() {
		tb.Fatalf("SCRIPT LOAD = %s, want the script's SHA %s", sha, s.Hash())
	}
}

// NonEmptyLua fails the test unless src, the Lua of file name, has a line
// of code: one that is neither blank nor a comment.
func NonEmptyLua(tb testing.TB, name, src string) {
	tb.Helper()
	for line := range strings.Lines(src) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "--") {
			return
		}
	}
	tb.Fatalf("%s has no Lua code", name)
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
