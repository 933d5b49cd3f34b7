package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
)

// TestClusterNodeKilled runs the bus on a three-node Redis Cluster: the
// partitions' streams, leases and sharded live channels spread over the
// shards, two gateways share the partitions, one is killed, and every
// client still gets every event published meanwhile once, in order.
func TestClusterNodeKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rdb := cl.Client(t)
	f := newFleetOn(t, cl.URL(), rdb, "a", "b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shards := map[string]bool{}
	for p := range fleetPartitions {
		node, err := rdb.MasterForKey(ctx, f.pub.keys.Ingress(p))
		if err != nil {
			t.Fatalf("shard of partition %d: %v", p, err)
		}
		shards[node.Options().Addr] = true
	}
	if len(shards) != len(cl.Nodes) {
		t.Fatalf("the %d partitions live on %d shards, want all %d", fleetPartitions, len(shards), len(cl.Nodes))
	}
	before := f.waitBalanced(10*time.Second, "a", "b")
	clients := f.clients(ctx, 2)
	pb := f.publish()
	time.Sleep(time.Second)

	f.nodes["b"].kill(t)
	f.waitTakenOver(before, "b")
	time.Sleep(time.Second)
	f.verify(pb.finish(), clients)
}
