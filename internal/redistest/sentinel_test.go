package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wsbus/wsbus/internal/testutil"
)

const wait = 30 * time.Second

// TestSentinelFailover: the helper's Sentinels fail the master over on
// request and after a crash, and a go-redis failover client of URL's
// master name follows them with the data nodes' password.
func TestSentinelFailover(t *testing.T) {
	st := StartSentinelWith(t, 1, 3, Options{Password: "pw"})
	ctx := context.Background()
	first := st.Master(t)
	if first != st.Servers[0].Addr {
		t.Fatalf("master %s, want the first server %s", first, st.Servers[0].Addr)
	}
	sentinels := make([]string, len(st.Sentinels))
	for i, s := range st.Sentinels {
		sentinels[i] = s.Addr
	}
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: MasterName, SentinelAddrs: sentinels, Password: "pw"})
	defer c.Close()
	if err := c.Set(ctx, "k", "1", 0).Err(); err != nil {
		t.Fatalf("SET through the Sentinels: %v", err)
	}

	second := st.Failover(t)
	if second == first {
		t.Fatalf("SENTINEL FAILOVER left the master at %s", first)
	}
	testutil.Eventually(t, wait, func() error { return c.Set(ctx, "k", "2", 0).Err() })
	st.AwaitReplicas(t) // the old master follows the new one

	killed := st.KillMaster(t)
	if killed.Addr != second {
		t.Fatalf("KillMaster killed %s, want the master %s", killed.Addr, second)
	}
	if third := st.AwaitMaster(t, second); third != first {
		t.Fatalf("after the crash the master is %s, want the only replica left, %s", third, first)
	}
	testutil.Eventually(t, wait, func() error { return c.Set(ctx, "k", "3", 0).Err() })
	st.Rejoin(t, killed) // it comes back empty, as a replica, and syncs
	st.AwaitReplicas(t)
	restarted := killed.Client(t)
	if v, err := restarted.Get(ctx, "k").Result(); err != nil || v != "3" {
		info, _ := restarted.Info(ctx, "replication").Result()
		mv, merr := st.Server(first).Client(t).Get(ctx, "k").Result()
		t.Fatalf("the restarted node has k = %q, %v; want the new master's 3 (the master %s has %q, %v); the restarted node's replication:\n%s", v, err, first, mv, merr, info)
	}
}
