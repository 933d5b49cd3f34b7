package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/wsbus/wsbus/internal/bench"
	"github.com/wsbus/wsbus/streams"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) == 1 && args[0] == "--worker" {
		return bench.RunWorker(os.Stdin, stdout)
	}
	fs := newFlagSet("bench", "bench [flags]", stderr)
	var c common
	c.register(fs)
	url := fs.String("url", "ws://127.0.0.1:8080/v1/ws", "WebSocket endpoint of the gateway under test (start it with a high --upgrade-rate)")
	conns := fs.Int("conns", 1000, "connections to open")
	perWorker := fs.Int("per-worker", 18000, "connections per client process (the fd limit is 20,000 per process)")
	mix := fs.String("mix", "shared", "topic mix: shared (one topic), own (one each) or zipf")
	topics := fs.Int("topics", 1000, "topics of the zipf mix")
	settle := fs.Duration("settle", 15*time.Second, "idle time before the gateway is measured")
	broadcasts := fs.Int("broadcasts", 20, "events broadcast to the shared topic")
	gap := fs.Duration("gap", 500*time.Millisecond, "time between broadcasts")
	unicastRate := fs.Int("unicast-rate", 5000, "with --mix own: events per second, each to one connection's topic")
	unicastFor := fs.Duration("unicast-for", 30*time.Second, "with --mix own: how long to publish unicast events")
	stormN := fs.Int("storm", 10, "resume storm: drop every client, publish this many events, time their resumes (0: skip)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	rdb, err := c.client(0)
	if err != nil {
		return err
	}
	defer rdb.Close()
	res, err := bench.Run(context.Background(), bench.Config{
		URL: *url, Redis: rdb, Keys: streams.Keys{Prefix: c.prefix},
		Conns: *conns, PerWorker: *perWorker, Mix: *mix, Topics: *topics,
		Settle: *settle, Broadcasts: *broadcasts, Gap: *gap, Storm: *stormN,
		UnicastRate: *unicastRate, UnicastFor: *unicastFor,
		Executable: exe, WorkerArgs: []string{"bench", "--worker"}, Progress: stderr,
	})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	printBench(stdout, res)
	return nil
}

func printBench(w io.Writer, r *bench.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "connections\t%d (%d failed) over %d workers, mix %s\n", r.Conns, r.Failed, r.Workers, r.Mix)
	fmt.Fprintf(tw, "upgrades\t%.0f/s\n", r.UpgradesSec)
	fmt.Fprintf(tw, "RSS per connection\t%.0f B\n", r.PerConn.RSSBytes)
	fmt.Fprintf(tw, "heap per connection\t%.0f B\n", r.PerConn.HeapBytes)
	fmt.Fprintf(tw, "goroutines per connection\t%.4f\n", r.PerConn.Goroutines)
	fmt.Fprintf(tw, "fds per connection\t%.3f\n", r.PerConn.FDs)
	if b := r.Broadcast; b != nil {
		fmt.Fprintf(tw, "broadcast last receipt\tp50 %v  p99 %v  max %v\n", b.LastP50, b.LastP99, b.LastMax)
		fmt.Fprintf(tw, "broadcast all receipts\tp50 %v  p99 %v  max %v\n", b.AllP50, b.AllP99, b.AllMax)
		fmt.Fprintf(tw, "broadcast lost\t%d of %d\n", b.Lost, int64(b.Receipts)+b.Lost)
	}
	if u := r.Unicast; u != nil {
		fmt.Fprintf(tw, "unicast\t%d events at %d/s for %v: p50 %v  p99 %v  max %v\n", u.Sent, u.Rate, u.For, u.P50, u.P99, u.Max)
		fmt.Fprintf(tw, "unicast lost\t%d of %d\n", u.Lost, u.Sent)
	}
	if st := r.Storm; st != nil {
		fmt.Fprintf(tw, "resume storm\t%d clients, %d missed each: done=%v in %v\n", st.Clients, st.Missed, st.Done, st.Took.Round(time.Millisecond))
		fmt.Fprintf(tw, "resume storm problems\t%d not recovered, %d lost, %d duplicates, %d failed reconnects\n", st.NotRecovered, st.Lost, st.Duplicates, st.Failed)
	}
	tw.Flush()
}
