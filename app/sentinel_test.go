package app

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
)

// TestPubSubFollowsSentinelFailover: after a SENTINEL FAILOVER, a pub/sub
// connection of a client of a redis+sentinel:// URL moves to the new
// master as soon as the client's commands do, not when Sentinel makes the
// old master a replica 10 to 20 s later (go-redis alone leaves it there,
// and a gateway's live channels would hear nothing meanwhile).
func TestPubSubFollowsSentinelFailover(t *testing.T) {
	st := redistest.StartSentinelWith(t, 1, 3, redistest.Options{Password: "pw"})
	var c common
	c.redis.values = []string{st.URL()}
	rdb, err := c.client(0)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	ctx := context.Background()
	ps := rdb.Subscribe(ctx, "ch")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE through the Sentinels: %v", err)
	}
	old := st.Master(t)
	// Sentinels the URL does not name (go-redis finds them through the
	// others) are told from data nodes by ROLE.
	d := newFailoverDialer(&redis.FailoverOptions{SentinelAddrs: []string{st.Sentinels[0].Addr}})
	for _, c := range []struct {
		addr            string
		sentinel, known bool
	}{
		{st.Sentinels[1].Addr, true, true},
		{old, false, true}, // it refuses ROLE without the password
		{"127.0.0.1:" + fmt.Sprint(redistest.FreePort(t)), false, false},
	} {
		if s, k := d.isSentinel(ctx, "tcp", c.addr); s != c.sentinel || k != c.known {
			t.Errorf("isSentinel(%s) = %v, %v; want %v, %v", c.addr, s, k, c.sentinel, c.known)
		}
	}
	master := st.Failover(t)
	moved := time.Now()
	newMaster := st.Server(master).Client(t)
	testutil.Eventually(t, 5*time.Second, func() error {
		// Commands keep the client busy, as a gateway's do: they move
		// first, to the new master.
		if err := rdb.Ping(ctx).Err(); err != nil {
			return err
		}
		if err := newMaster.Publish(ctx, "ch", "new").Err(); err != nil {
			return err
		}
		msg, err := ps.ReceiveTimeout(ctx, 100*time.Millisecond)
		if m, ok := msg.(*redis.Message); ok && m.Payload == "new" {
			return nil
		}
		return fmt.Errorf("nothing published on the new master %s received yet: %v, %v", master, msg, err)
	})
	t.Logf("the subscription heard the new master %v after the failover", time.Since(moved).Round(10*time.Millisecond))
	role, err := st.Server(old).Client(t).Do(ctx, "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] != "master" {
		t.Errorf("the old master %s answers ROLE %v, %v: Sentinel had made it a replica already, and the test did not test the window", old, role, err)
	}
}
