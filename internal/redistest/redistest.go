// Package redistest starts a real redis-server for tests, on a free port in
// a temporary directory, and stops it when the test ends. It never skips: a
// machine without redis-server fails the test with the command to fix it.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsbus/wsbus/internal/testutil"
)

// Server is a running redis-server.
type Server struct {
	Addr string
	opts Options
	args []string // redis-server's arguments, for Restart
	dir  string
	mu   sync.Mutex
	cmd  *exec.Cmd     // the running process; nil once killed or shut down
	done chan struct{} // closed once cmd has exited
}

// Options are what a server is started with. The zero value is a server
// that every client may use without a password.
type Options struct {
	// User and Password, when Password is set, make the server refuse
	// clients that do not AUTH as User with Password, and its replicas
	// authenticate to their master so. An empty User is Redis's default
	// user (requirepass); any other is an ACL user with every permission,
	// and the default user is then off, so a client that sends the
	// password without the name is refused too.
	User, Password string
	// Args are added to redis-server's defaults (say,
	// "--enable-debug-command", "yes").
	Args []string
}

// authArgs are the redis-server arguments of o's User and Password.
func (o Options) authArgs() []string {
	switch {
	case o.Password == "":
		return nil
	case o.User == "" || o.User == "default":
		return []string{"--requirepass", o.Password, "--masterauth", o.Password}
	}
	return []string{
		"--user", o.User, "on", ">" + o.Password, "~*", "&*", "+@all",
		"--user", "default", "off",
		"--masteruser", o.User, "--masterauth", o.Password,
	}
}

// userinfo is o's credentials as a URL's user information, with its @.
func (o Options) userinfo() string {
	if o.Password == "" {
		return ""
	}
	return url.UserPassword(o.User, o.Password).String() + "@"
}

// Start starts a redis-server, with args added to the defaults (say,
// "--enable-debug-command", "yes"), waits until it answers PING, and stops
// it at the end of the test.
func Start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	return StartWith(tb, Options{Args: args})
}

// StartAt is Start on a given port, with its data in dir.
func StartAt(tb testing.TB, port int, dir string, args ...string) *Server {
	tb.Helper()
	return startAt(tb, port, dir, Options{Args: args})
}

// StartWith is Start with Options.
func StartWith(tb testing.TB, o Options) *Server {
	tb.Helper()
	return startAt(tb, FreePort(tb), tb.TempDir(), o)
}

func startAt(tb testing.TB, port int, dir string, o Options) *Server {
	tb.Helper()
	bin := serverBinary(tb)
	args := append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--save", "", "--appendonly", "no",
		"--logfile", dir + "/redis.log"}, o.authArgs()...)
	args = append(args, o.Args...)
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), opts: o, args: append([]string{bin}, args...), dir: dir}
	tb.Cleanup(s.Kill)
	s.run(tb)
	return s
}

// serverBinary returns the path of redis-server.
func serverBinary(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found: install it with `go tool task redis` (apt-get install redis-server): %v", err)
	}
	return bin
}

// run starts the process, with extra added to its arguments for this run
// only, and waits until it answers PING.
func (s *Server) run(tb testing.TB, extra ...string) {
	tb.Helper()
	args := append(append([]string(nil), s.args[1:]...), extra...)
	cmd := exec.Command(s.args[0], args...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", s.args[0], err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	c := redis.NewClient(s.options())
	defer c.Close()
	testutil.Eventually(tb, 10*time.Second, func() error {
		if err := c.Ping(context.Background()).Err(); err != nil {
			return fmt.Errorf("redis-server on %s does not answer (log: %s/redis.log): %w", s.Addr, s.dir, err)
		}
		return nil
	})
}

// Shutdown stops the server with SHUTDOWN, as an operator would: it
// writes what its configuration persists (an AOF with "--appendonly",
// "yes"; nothing by default) and exits. Restart starts it again.
func (s *Server) Shutdown(tb testing.TB) {
	tb.Helper()
	opts := s.options()
	opts.MaxRetries = -1
	c := redis.NewClient(opts)
	defer c.Close()
	// The server closes the connection instead of answering.
	_ = c.Shutdown(context.Background()).Err()
	s.mu.Lock()
	done := s.done
	s.cmd = nil
	s.mu.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		tb.Fatalf("redis-server on %s did not exit within 10s of SHUTDOWN (log: %s/redis.log)", s.Addr, s.dir)
	}
}

// Restart starts the server again, on the same port and directory with
// the same arguments, and waits until it answers: after Shutdown it loads
// what it persisted; a running server is killed first (and so comes back
// without its data, unless Args keep some). A data node of a Sentinel
// setup comes back so too, as the master or replica it was started as:
// Sentinel.Rejoin brings one back as a replica that cannot be promoted
// before it has the master's data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Kill()
	s.run(tb)
}

// options are the client options of the server.
func (s *Server) options() *redis.Options {
	return &redis.Options{Addr: s.Addr, Username: s.opts.User, Password: s.opts.Password}
}

// Cluster is a Redis Cluster: masters, each with its replicas.
type Cluster struct {
	Masters  []*Server
	Replicas [][]*Server // by master
	opts     Options
}

// StartCluster starts masters cluster-enabled redis-servers, gives each an
// equal range of the 16,384 slots and replicas replicas of its own, joins
// them and waits until every node reports the cluster ok and every replica
// is in sync. A master that stops answering for 2 s is failed over. They
// stop at the end of the test.
func StartCluster(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	return StartClusterWith(tb, masters, replicas, Options{})
}

// StartClusterWith is StartCluster with Options for every node.
func StartClusterWith(tb testing.TB, masters, replicas int, o Options) *Cluster {
	tb.Helper()
	cl := &Cluster{Replicas: make([][]*Server, masters), opts: o}
	node := func() *Server {
		dir := tb.TempDir()
		no := o
		no.Args = append(slices.Clone(o.Args), "--cluster-enabled", "yes",
			"--cluster-config-file", dir+"/nodes.conf", "--cluster-node-timeout", "2000")
		return StartWith(tb, no)
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
			testutil.Eventually(tb, 20*time.Second, func() error { return clients[r].ClusterReplicate(ctx, id).Err() })
		}
	}
	testutil.Eventually(tb, 30*time.Second, func() error {
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

// URL is the redis+cluster:// URL of the cluster, as --redis takes it,
// with its credentials.
func (cl *Cluster) URL() string {
	return "redis+cluster://" + cl.opts.userinfo() + strings.Join(cl.addrs(), ",")
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
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.addrs(), ClusterStateReloadInterval: time.Second,
		Username: cl.opts.User, Password: cl.opts.Password})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// MoveSlot moves the slot of key to another master, with its keys, as
// redis-cli --cluster reshard does, and returns a client of that master.
// The old master drops the slot's sharded pub/sub subscribers then (each
// gets an SUNSUBSCRIBE).
func (cl *Cluster) MoveSlot(tb testing.TB, key string) *redis.Client {
	tb.Helper()
	ctx := context.Background()
	rdb := cl.Client(tb)
	slot, err := rdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		tb.Fatal(err)
	}
	src, err := rdb.MasterForKey(ctx, key)
	if err != nil {
		tb.Fatal(err)
	}
	dst := cl.Masters[0].Client(tb)
	if src.Options().Addr == cl.Masters[0].Addr {
		dst = cl.Masters[1].Client(tb)
	}
	srcID, dstID := src.ClusterMyID(ctx).Val(), dst.ClusterMyID(ctx).Val()
	host, port, _ := net.SplitHostPort(dst.Options().Addr)
	for _, step := range []struct {
		c    *redis.Client
		args []any
	}{
		{dst, []any{"CLUSTER", "SETSLOT", slot, "IMPORTING", srcID}},
		{src, []any{"CLUSTER", "SETSLOT", slot, "MIGRATING", dstID}},
	} {
		if err := step.c.Do(ctx, step.args...).Err(); err != nil {
			tb.Fatalf("%v: %v", step.args, err)
		}
	}
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		if err != nil {
			tb.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			tb.Fatalf("MIGRATE %v: %v", keys, err)
		}
	}
	for _, c := range []*redis.Client{dst, src} {
		if err := c.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err(); err != nil {
			tb.Fatalf("CLUSTER SETSLOT %d NODE on %s: %v", slot, c.Options().Addr, err)
		}
	}
	return dst
}

// Kill stops the server at once, as a crash would (SIGKILL). Killing a
// killed server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-done
	}
}

// Pause stops the server's process (SIGSTOP), as a stalled machine would:
// it answers nothing and its connections stay open, what is sent to it
// waiting in the kernel's buffers, and what it would send (to its
// replicas too) in its own. Continue resumes it.
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGSTOP)
}

// Continue resumes a server stopped by Pause.
func (s *Server) Continue(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGCONT)
}

func (s *Server) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		tb.Fatalf("redis-server on %s is not running", s.Addr)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("signalling redis-server on %s: %v", s.Addr, err)
	}
}

// URL is the redis:// URL of the server, with its credentials.
func (s *Server) URL() string { return "redis://" + s.opts.userinfo() + s.Addr + "/0" }

// Client returns a client of the server, closed at the end of the test.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(s.options())
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

// StartMain is Start for a TestMain, which has no testing.TB (say, for a
// package's runnable Examples): it returns the server and the function
// that stops it and removes its directory, or why it could not start.
func StartMain(args ...string) (s *Server, stop func(), err error) {
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		return nil, nil, err
	}
	tb := &mainTB{dir: dir}
	stop = func() {
		for i := len(tb.cleanups) - 1; i >= 0; i-- {
			tb.cleanups[i]()
		}
		_ = os.RemoveAll(dir)
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(mainFailure)
			if !ok {
				panic(r)
			}
			stop()
			s, stop, err = nil, nil, errors.New(string(f))
		}
	}()
	return Start(tb, args...), stop, nil
}

// mainTB is the testing.TB of StartMain: its Fatal panics with a
// mainFailure, which StartMain turns into an error. Only the methods
// Start calls are implemented; the embedded nil TB panics on the others.
type mainTB struct {
	testing.TB
	dir      string
	cleanups []func()
}

type mainFailure string

func (tb *mainTB) Helper()                      {}
func (tb *mainTB) Cleanup(f func())             { tb.cleanups = append(tb.cleanups, f) }
func (tb *mainTB) TempDir() string              { return tb.dir }
func (tb *mainTB) Fatal(args ...any)            { panic(mainFailure(fmt.Sprint(args...))) }
func (tb *mainTB) Fatalf(f string, args ...any) { panic(mainFailure(fmt.Sprintf(f, args...))) }
