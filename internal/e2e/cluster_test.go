package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// TestClusterNodeKilled runs the bus on a three-node Redis Cluster: the
// partitions' streams, leases and sharded live channels spread over the
// shards, two gateways share the partitions, one is killed, and every
// client still gets every event published meanwhile once, in order.
func TestClusterNodeKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	rdb := cl.Client(t)
	f := newFleetOn(t, cl.URL(), rdb, "a", "b")
	ctx := f.ctx
	shards := map[string]bool{}
	for p := range fleetPartitions {
		node, err := rdb.MasterForKey(ctx, f.pub.Keys.Ingress(p))
		if err != nil {
			t.Fatalf("shard of partition %d: %v", p, err)
		}
		shards[node.Options().Addr] = true
	}
	if len(shards) != len(cl.Masters) {
		t.Fatalf("the %d partitions live on %d shards, want all %d", fleetPartitions, len(shards), len(cl.Masters))
	}
	before := f.waitBalanced(10*time.Second, "a", "b")
	clients := f.clients(2)
	pb := f.publish()
	pb.more(t, 500) // load before the kill

	f.nodes["b"].kill(t)
	f.waitTakenOver(before, "b")
	pb.more(t, 500) // load after the take-over
	f.verify(pb.finish(), clients)
}

// TestClusterMasterFailover kills a Redis Cluster master under two
// gateways and their clients: its replica is promoted, the gateways take
// the partitions of that shard back (their renewals failed meanwhile),
// their pipelines and live channels resume on the new master, and every
// client gets every event published before and after, once, in order,
// without a resume answered recovered:false. Events are published only
// while the cluster is whole, and the master dies only once its replica
// has every write: an entry a master acknowledged and had not replicated
// is lost by Redis's design, which the partition epoch cannot tell.
func TestClusterMasterFailover(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	rdb := cl.Client(t)
	f := newFleetOn(t, cl.URL(), rdb, "a", "b")
	f.waitBalanced(10*time.Second, "a", "b")
	ctx := f.ctx
	clients := f.clients(2)
	pb := f.publish()
	pb.more(t, 500) // load before the failover
	published := pb.finish()
	// Every event delivered and in history, and every write so far on a
	// replica, before a master dies.
	f.verify(published, clients)
	for p := range fleetPartitions {
		node, err := rdb.MasterForKey(ctx, f.pub.Keys.Ingress(p))
		if err != nil {
			t.Fatal(err)
		}
		// WAIT counts the writes before it on its own connection, and the
		// replication stream is one: a write of ours, then WAIT, in one
		// pipeline, covers every earlier write to that master.
		pipe := node.Pipeline()
		pipe.Set(ctx, fmt.Sprintf("%s:{%d}:probe", f.prefix, p), "1", time.Minute)
		acked := pipe.Do(ctx, "WAIT", 1, 5000)
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		if n, err := acked.Int(); err != nil || n < 1 {
			t.Fatalf("WAIT on %s: %d replicas, %v", node.Options().Addr, n, err)
		}
	}

	cl.Masters[1].Kill()
	promoted := cl.Replicas[1][0].Client(t)
	testutil.Eventually(t, 20*time.Second, func() error {
		role, err := promoted.Do(ctx, "ROLE").Slice()
		if err != nil || len(role) == 0 || role[0] != "master" {
			return fmt.Errorf("replica %s not promoted yet: %v %v", cl.Replicas[1][0].Addr, role, err)
		}
		return nil
	})
	f.waitBalanced(20*time.Second, "a", "b")

	after := startPublishing(t, f.pub, f.topics, time.Millisecond, true)
	after.more(t, 1000) // load after the failover
	for topic, ids := range after.finish() {
		published[topic] = append(published[topic], ids...)
	}
	f.verify(published, clients)
}

// TestClusterSlotMoved moves the slot of a partition to the other master
// while events are published to it: Redis drops the gateway's
// subscriptions to that slot's live channels, and the gateway subscribes
// them again on the new node and catches up; every client gets every
// event once, in order.
func TestClusterSlotMoved(t *testing.T) {
	cl := redistest.StartCluster(t, 2, 0)
	rdb := cl.Client(t)
	f := newFleetOn(t, cl.URL(), rdb, "a")
	f.waitBalanced(10*time.Second, "a")
	ctx := f.ctx
	clients := f.clients(2)
	pb := startPublishing(t, f.pub, f.topics, time.Millisecond, true)
	pb.more(t, 500) // load before the move

	key := f.pub.Keys.Ingress(streams.Partition(f.topics[0], fleetPartitions))
	slot, err := rdb.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	dst := cl.MoveSlot(t, key)
	testutil.Eventually(t, 10*time.Second, func() error {
		rdb.ReloadState(ctx)
		node, err := rdb.MasterForKey(ctx, key)
		if err != nil || node.Options().Addr != dst.Options().Addr {
			return fmt.Errorf("slot %d not yet on %s: %v", slot, dst.Options().Addr, err)
		}
		return nil
	})
	pb.more(t, 1000) // load after the move
	f.verify(pb.finish(), clients)
}
