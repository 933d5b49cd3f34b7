package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Membership is the sorted set <prefix>:nodes: each live node with the
// time (unix ms) its heartbeat expires. A node that stops heartbeating
// drops out after LeaseTTL, as its leases do.

// heartbeat queues on pipe what announces this node and prunes the
// expired ones.
func (o *Owner) heartbeat(ctx context.Context, pipe redis.Pipeliner) {
	now := time.Now()
	pipe.ZAdd(ctx, o.cfg.Keys.Nodes(), redis.Z{Score: float64(now.Add(o.cfg.LeaseTTL).UnixMilli()), Member: o.cfg.Node})
	pipe.ZRemRangeByScore(ctx, o.cfg.Keys.Nodes(), "-inf", "("+strconv.FormatInt(now.UnixMilli(), 10))
}

// leave takes this node out of the membership at once.
func (o *Owner) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = o.cfg.LeaseRedis.ZRem(ctx, o.cfg.Keys.Nodes(), o.cfg.Node).Err()
}

// fleetView is what a node reads of the fleet each tick.
type fleetView struct {
	nodes  []string       // live nodes, this one included
	owners map[int]string // partition -> node holding its lease
}

func (o *Owner) view(ctx context.Context) (fleetView, error) {
	nodes, owners, err := ReadFleet(ctx, o.cfg.LeaseRedis, o.cfg.Keys.Nodes(), o.cfg.Partitions, o.cfg.Keys.Owner)
	if err != nil {
		return fleetView{}, err
	}
	v := fleetView{owners: make(map[int]string, len(owners))}
	self := false
	for _, n := range nodes {
		v.nodes = append(v.nodes, n.ID)
		self = self || n.ID == o.cfg.Node
	}
	if !self {
		v.nodes = append(v.nodes, o.cfg.Node)
	}
	for p, l := range owners {
		v.owners[p] = l.Node
	}
	return v, nil
}

// Node is a live member of the fleet.
type Node struct {
	ID      string
	Expires time.Time // when its heartbeat runs out
}

// Lease is the current holder of a partition.
type Lease struct {
	Node  string
	Token int64
	TTL   time.Duration
}

// ReadFleet reads the live nodes and the lease of each of n partitions
// (partitions without a holder are absent from the map).
func ReadFleet(ctx context.Context, rdb redis.UniversalClient, nodesKey string, n int, ownerKey func(int) string) ([]Node, map[int]Lease, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	zs, err := rdb.ZRangeByScoreWithScores(ctx, nodesKey, &redis.ZRangeBy{Min: now, Max: "+inf"}).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("reading nodes: %w", err)
	}
	nodes := make([]Node, len(zs))
	for i, z := range zs {
		nodes[i] = Node{ID: z.Member.(string), Expires: time.UnixMilli(int64(z.Score))}
	}
	pipe := rdb.Pipeline()
	gets := make([]*redis.StringCmd, n)
	ttls := make([]*redis.DurationCmd, n)
	for p := range n {
		gets[p] = pipe.Get(ctx, ownerKey(p))
		ttls[p] = pipe.PTTL(ctx, ownerKey(p))
	}
	_, _ = pipe.Exec(ctx) // a missing lease is redis.Nil, read below
	leases := make(map[int]Lease)
	for p := range n {
		v, err := gets[p].Result()
		if classify(err) == kindNil {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading lease of partition %d: %w", p, err)
		}
		i := strings.LastIndexByte(v, ' ')
		if i < 0 {
			continue
		}
		token, _ := strconv.ParseInt(v[i+1:], 10, 64)
		leases[p] = Lease{Node: v[:i], Token: token, TTL: ttls[p].Val()}
	}
	return nodes, leases, nil
}
