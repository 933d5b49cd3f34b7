package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsbus/wsbus/internal/testutil"
)

// MasterName is the name the Sentinels of StartSentinel know their master
// by.
const MasterName = "wsbus"

// Sentinel is a master, its replicas and the Sentinels that watch them,
// all local processes.
type Sentinel struct {
	// Servers are the data nodes: Servers[0] was the master at the start,
	// the others its replicas. Which one is master now is Master's answer.
	Servers   []*Server
	Sentinels []*Server // redis-server --sentinel processes
	opts      Options
}

// StartSentinel starts a master, replicas replicas of it and sentinels
// Sentinels (redis-server --sentinel, one config file each) on free ports,
// and waits until every replica is in sync and every Sentinel sees the
// master, all its replicas and every other Sentinel. A master that does
// not answer for 1 s is failed over by a quorum of a majority of the
// Sentinels. Everything stops at the end of the test.
func StartSentinel(tb testing.TB, replicas, sentinels int) *Sentinel {
	tb.Helper()
	return StartSentinelWith(tb, replicas, sentinels, Options{})
}

// StartSentinelWith is StartSentinel with Options for the data nodes; the
// Sentinels authenticate to them with its credentials and ask none of
// their own clients.
func StartSentinelWith(tb testing.TB, replicas, sentinels int, o Options) *Sentinel {
	tb.Helper()
	if sentinels < 1 {
		tb.Fatal("StartSentinel needs at least one Sentinel")
	}
	st := &Sentinel{opts: o}
	master := StartWith(tb, o)
	st.Servers = append(st.Servers, master)
	host, port, _ := net.SplitHostPort(master.Addr)
	for range replicas {
		ro := o
		ro.Args = append(append([]string(nil), o.Args...), "--replicaof", host, port)
		st.Servers = append(st.Servers, StartWith(tb, ro))
	}
	ctx := context.Background()
	testutil.Eventually(tb, 20*time.Second, func() error { return st.replicasInSync(ctx, master.Addr) })
	for range sentinels {
		st.Sentinels = append(st.Sentinels, startSentinelProcess(tb, master.Addr, sentinels/2+1, o))
	}
	testutil.Eventually(tb, 30*time.Second, func() error { return st.ready(ctx, master.Addr, replicas) })
	return st
}

// AwaitReplicas waits, up to 30 s, until every data node but the master is
// its replica in sync and every Sentinel sees them so: after a failover,
// before the next one. Every data node and Sentinel must be running.
// After a failover the old master is made a replica of the new one only
// once Sentinel's periodic INFO (every 10 s) finds it still a master:
// this takes 10 to 20 s.
func (st *Sentinel) AwaitReplicas(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	testutil.Eventually(tb, 30*time.Second, func() error {
		master, err := st.master(ctx)
		if err != nil {
			return err
		}
		if err := st.replicasInSync(ctx, master); err != nil {
			return err
		}
		return st.ready(ctx, master, len(st.Servers)-1)
	})
}

// replicasInSync checks every data node but master with inSync.
func (st *Sentinel) replicasInSync(ctx context.Context, master string) error {
	for _, r := range st.Servers {
		if r.Addr == master {
			continue
		}
		if err := inSync(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// startSentinelProcess starts one Sentinel of master, failing it over with
// quorum votes.
func startSentinelProcess(tb testing.TB, master string, quorum int, o Options) *Server {
	tb.Helper()
	bin := serverBinary(tb)
	port := FreePort(tb)
	dir := tb.TempDir()
	host, mport, _ := net.SplitHostPort(master)
	conf := []string{
		"port " + strconv.Itoa(port),
		"bind 127.0.0.1",
		"protected-mode no",
		"dir " + dir,
		"logfile " + filepath.Join(dir, "sentinel.log"),
		fmt.Sprintf("sentinel monitor %s %s %s %d", MasterName, host, mport, quorum),
		// Fast enough for tests: down after 1 s without an answer; the
		// next failover of the master (or the retry of a stalled one)
		// may start 2 × 3 s after the last.
		"sentinel down-after-milliseconds " + MasterName + " 1000",
		"sentinel failover-timeout " + MasterName + " 3000",
		"sentinel parallel-syncs " + MasterName + " 1",
	}
	if o.Password != "" {
		if o.User != "" && o.User != "default" {
			conf = append(conf, "sentinel auth-user "+MasterName+" "+o.User)
		}
		conf = append(conf, "sentinel auth-pass "+MasterName+" "+o.Password)
	}
	path := filepath.Join(dir, "sentinel.conf") // Sentinel rewrites it: it must be writable
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		tb.Fatalf("writing %s: %v", path, err)
	}
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), args: []string{bin, path, "--sentinel"}, dir: dir}
	tb.Cleanup(s.Kill)
	s.run(tb)
	return s
}

// inSync checks that replica r's link to its master is up and that it
// has loaded what the master sent.
func inSync(ctx context.Context, r *Server) error {
	c := redis.NewClient(r.options())
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("replica %s: %w", r.Addr, err)
	}
	if !strings.Contains(info, "role:slave") || !strings.Contains(info, "master_link_status:up") ||
		!strings.Contains(info, "master_sync_in_progress:0") {
		return fmt.Errorf("replica %s not in sync:\n%s", r.Addr, info)
	}
	return nil
}

// ready checks that every Sentinel sees master as the master, up, with
// replicas replicas up and every other Sentinel.
func (st *Sentinel) ready(ctx context.Context, master string, replicas int) error {
	for _, s := range st.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		m, err := sc.Master(ctx, MasterName).Result()
		if err == nil && m["ip"]+":"+m["port"] != master {
			err = fmt.Errorf("sees master %s:%s, want %s", m["ip"], m["port"], master)
		}
		if err == nil && (m["flags"] != "master" || m["num-slaves"] != strconv.Itoa(replicas) ||
			m["num-other-sentinels"] != strconv.Itoa(len(st.Sentinels)-1)) {
			err = fmt.Errorf("sees flags %s, %s replicas and %s other Sentinels", m["flags"], m["num-slaves"], m["num-other-sentinels"])
		}
		if err == nil {
			err = replicasUp(ctx, sc)
		}
		_ = sc.Close()
		if err != nil {
			return fmt.Errorf("Sentinel %s: %w", s.Addr, err)
		}
	}
	return nil
}

// replicasUp checks that a Sentinel sees every replica of the master up.
func replicasUp(ctx context.Context, sc *redis.SentinelClient) error {
	rs, err := sc.Replicas(ctx, MasterName).Result()
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r["flags"] != "slave" || r["master-link-status"] != "ok" {
			return fmt.Errorf("sees replica %s:%s with flags %s and link %s", r["ip"], r["port"], r["flags"], r["master-link-status"])
		}
	}
	return nil
}

// URL is the redis+sentinel:// URL of the master, as --redis takes it, with
// the data nodes' credentials.
func (st *Sentinel) URL() string {
	addrs := make([]string, len(st.Sentinels))
	for i, s := range st.Sentinels {
		addrs[i] = s.Addr
	}
	return "redis+sentinel://" + st.opts.userinfo() + strings.Join(addrs, ",") + "/" + MasterName
}

// Master returns the address of the current master, as the first Sentinel
// that answers says.
func (st *Sentinel) Master(tb testing.TB) string {
	tb.Helper()
	addr, err := st.master(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

func (st *Sentinel) master(ctx context.Context) (string, error) {
	var errs []error
	for _, s := range st.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
		hp, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
		_ = sc.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		errs = append(errs, fmt.Errorf("Sentinel %s: %v", s.Addr, err))
	}
	return "", fmt.Errorf("no Sentinel names the master: %w", errors.Join(errs...))
}

// Server returns the data node at addr, or nil.
func (st *Sentinel) Server(addr string) *Server {
	for _, s := range st.Servers {
		if s.Addr == addr {
			return s
		}
	}
	return nil
}

// Failover asks a Sentinel for a failover (SENTINEL FAILOVER, which needs
// no agreement and no failure), waits until it is done (see AwaitMaster)
// and returns the new master's address.
func (st *Sentinel) Failover(tb testing.TB) string {
	tb.Helper()
	old := st.Master(tb)
	sc := redis.NewSentinelClient(&redis.Options{Addr: st.Sentinels[0].Addr})
	defer sc.Close()
	if err := sc.Failover(context.Background(), MasterName).Err(); err != nil {
		tb.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	return st.AwaitMaster(tb, old)
}

// KillMaster SIGKILLs the current master, as a crash would, and returns
// it (Rejoin brings it back, empty, as a replica of the new master). The
// Sentinels fail over after about a second: AwaitMaster waits for it.
func (st *Sentinel) KillMaster(tb testing.TB) *Server {
	tb.Helper()
	addr := st.Master(tb)
	s := st.Server(addr)
	if s == nil {
		tb.Fatalf("the master %s is none of the data nodes", addr)
	}
	s.Kill()
	return s
}

// Rejoin restarts the killed data node s, empty, as a replica of the
// current master, and waits until it has loaded the master's data. Until
// then its replica-priority is 0, so the Sentinels do not promote it: an
// empty replica is eligible (it has never lost its link), and a master
// that missed its Sentinels' pings for a second while s synced (a loaded
// machine, the fork of the sync) would be failed over to it and lose its
// data to it. Its priority is then the default again.
func (st *Sentinel) Rejoin(tb testing.TB, s *Server) {
	tb.Helper()
	host, port, err := net.SplitHostPort(st.Master(tb))
	if err != nil {
		tb.Fatal(err)
	}
	s.Kill()
	s.run(tb, "--replicaof", host, port, "--replica-priority", "0")
	testutil.Eventually(tb, 30*time.Second, func() error { return inSync(context.Background(), s) })
	c := redis.NewClient(s.options())
	defer c.Close()
	if err := c.ConfigSet(context.Background(), "replica-priority", "100").Err(); err != nil {
		tb.Fatalf("CONFIG SET replica-priority on %s: %v", s.Addr, err)
	}
}

// AwaitMaster waits, up to 30 s, until every live Sentinel names the same
// master, other than old, and that master answers ROLE as one, then
// returns its address.
func (st *Sentinel) AwaitMaster(tb testing.TB, old string) string {
	tb.Helper()
	ctx := context.Background()
	var addr string
	testutil.Eventually(tb, 30*time.Second, func() error {
		seen := ""
		for _, s := range st.Sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr})
			hp, err := sc.GetMasterAddrByName(ctx, MasterName).Result()
			_ = sc.Close()
			if err != nil || len(hp) != 2 {
				continue // a killed Sentinel
			}
			a := net.JoinHostPort(hp[0], hp[1])
			if a == old || seen != "" && a != seen {
				return fmt.Errorf("Sentinel %s names %s as master (old %s)", s.Addr, a, old)
			}
			seen = a
		}
		m := st.Server(seen)
		if m == nil {
			return fmt.Errorf("no Sentinel names a master (old %s)", old)
		}
		c := redis.NewClient(m.options())
		defer c.Close()
		role, err := c.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("new master %s answers ROLE %v, %v", seen, role, err)
		}
		addr = seen
		return nil
	})
	return addr
}
