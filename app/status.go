package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// Status is what `wsbus status` reports of a bus.
type Status struct {
	Prefix     string            `json:"prefix"`
	Partitions int               `json:"partitions"`
	Schema     int               `json:"schema"`
	Nodes      []NodeStatus      `json:"nodes"`
	Partition  []PartitionStatus `json:"partition"`
}

// NodeStatus is one live node.
type NodeStatus struct {
	ID         string    `json:"id"`
	Partitions int       `json:"partitions"`
	Expires    time.Time `json:"heartbeat_expires"`
}

// PartitionStatus is one partition: its owner and how far behind it is.
type PartitionStatus struct {
	P       int       `json:"p"`
	Owner   string    `json:"owner"` // empty while no node holds it
	Token   int64     `json:"token"`
	Lag     int64     `json:"lag"`     // ingress entries not yet read by the group
	Pending int64     `json:"pending"` // read, not yet acknowledged
	Epoch   string    `json:"epoch"`
	Changed time.Time `json:"last_owner_change"`
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "status [flags]", stdout, stderr)
	var c common
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of tables (with --watch: one JSON object per line)")
	watch := fs.Bool("watch", false, "redraw the status every --interval until Ctrl-C (on a terminal the screen is cleared; otherwise each frame follows the last after a blank line)")
	interval := fs.Duration("interval", 2*time.Second, "how often --watch reads the status again")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if *watch {
		if *interval <= 0 {
			return fmt.Errorf("--interval %v must be positive", *interval)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return c.watchStatus(ctx, stdout, statusFrames{every: *interval, json: *asJSON, clear: isTerminal(stdout)})
	}
	var st Status
	err := c.withRedis(statusReadTimeout, func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) error {
		var err error
		st, err = ReadStatus(ctx, rdb, keys)
		return err
	})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	printStatus(stdout, st)
	return nil
}

// ReadStatus reads the state of the bus with the given keys.
func ReadStatus(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) (Status, error) {
	n, err := streams.Partitions(ctx, rdb, keys)
	if err != nil {
		return Status{}, err
	}
	schema, err := migrations.Version(ctx, rdb, keys)
	if err != nil {
		return Status{}, err
	}
	nodes, leases, err := bus.ReadFleet(ctx, rdb, keys.Nodes(), n, keys.Owner)
	if err != nil {
		return Status{}, err
	}
	st := Status{Prefix: keys.Prefix, Partitions: n, Schema: schema, Partition: make([]PartitionStatus, n)}
	pipe := rdb.Pipeline()
	groups := make([]*redis.XInfoGroupsCmd, n)
	metas := make([]*redis.MapStringStringCmd, n)
	for p := range n {
		groups[p] = pipe.XInfoGroups(ctx, keys.Ingress(p))
		metas[p] = pipe.HGetAll(ctx, keys.PartitionMeta(p))
	}
	_, _ = pipe.Exec(ctx) // a missing stream shows as no group, read below
	perNode := map[string]int{}
	for p := range n {
		ps := PartitionStatus{P: p, Owner: leases[p].Node, Token: leases[p].Token}
		perNode[ps.Owner]++
		for _, g := range groups[p].Val() {
			if g.Name == streams.Group {
				ps.Lag, ps.Pending = g.Lag, g.Pending
			}
		}
		meta := metas[p].Val()
		ps.Epoch = meta["epoch"]
		if ms, err := strconv.ParseInt(meta["changed"], 10, 64); err == nil {
			ps.Changed = time.UnixMilli(ms).UTC()
		}
		st.Partition[p] = ps
	}
	for _, node := range nodes {
		st.Nodes = append(st.Nodes, NodeStatus{ID: node.ID, Partitions: perNode[node.ID], Expires: node.Expires.UTC()})
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].ID < st.Nodes[j].ID })
	return st, nil
}

func printStatus(w io.Writer, st Status) {
	fmt.Fprintf(w, "bus %q: %d partitions, schema %d, %d live nodes\n\n", st.Prefix, st.Partitions, st.Schema, len(st.Nodes))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPARTITIONS\tHEARTBEAT EXPIRES IN")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%d\t%v\n", n.ID, n.Partitions, time.Until(n.Expires).Round(100*time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "P\tOWNER\tTOKEN\tLAG\tPENDING\tEPOCH\tLAST OWNER CHANGE")
	for _, p := range st.Partition {
		owner, changed := p.Owner, "-"
		if owner == "" {
			owner = "(none)"
		}
		if !p.Changed.IsZero() {
			changed = fmt.Sprintf("%s (%v ago)", p.Changed.Format(time.RFC3339), time.Since(p.Changed).Round(time.Second))
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%s\t%s\n", p.P, owner, p.Token, p.Lag, p.Pending, p.Epoch, changed)
	}
	tw.Flush()
}
