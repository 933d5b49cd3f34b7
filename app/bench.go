package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/bench"
	"github.com/wsbus/wsbus/streams"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) == 1 && args[0] == "--worker" {
		return bench.RunWorker(os.Stdin, stdout)
	}
	fs := newFlagSet("bench", "bench [flags]", stdout, stderr)
	var c common
	c.register(fs)
	baselineServer := fs.String("baseline-server", "", "serve a baseline (naive or floor) on --listen instead of running a bench; the bench starts these itself")
	listen := fs.String("listen", "127.0.0.1:0", "with --baseline-server: address to listen on")
	baselines := fs.String("baselines", "naive,floor", "baselines to measure beside the gateway, with the same phases, their broadcasts taking turns with its own (empty: none); they need the gateway's bus on a single Redis; centrifugo measures the Centrifugo v6 at --centrifugo-url")
	centrifugoURL := fs.String("centrifugo-url", "", "with centrifugo in --baselines: the WebSocket endpoint of a running Centrifugo v6 (e.g. ws://127.0.0.1:8000/connection/websocket) with history and recovery on in the namespace bench, anonymous subscribes allowed there, and Prometheus metrics on")
	centrifugoKey := fs.String("centrifugo-api-key", "", "with centrifugo in --baselines: the key of its HTTP server API, which the bench publishes through")
	var urls stringList
	fs.Var(&urls, "url", "WebSocket endpoint of the gateway under test (start it with a high --upgrade-rate); repeat it, or separate with commas, to spread the connections over several gateways of one bus (default ws://127.0.0.1:8080/v1/ws)")
	conns := fs.Int("conns", 1000, "connections to open")
	perWorker := fs.Int("per-worker", 18000, "connections per client process (the fd limit is 20,000 per process)")
	mix := fs.String("mix", "shared", "topic mix: shared (one topic), own (one each), pair (each connection on the shared topic and its own) or zipf")
	prepareHost := fs.Bool("prepare-host", false, "check that this machine can hold --conns connections with both ends on it (memory, kernel limits) over --processes processes, raise the kernel's limits that are short (as root), say what changed, and exit; go tool task bench-million runs it first")
	processes := fs.Int("processes", 0, "with --prepare-host: the gateways and client workers the run will start")
	var gatewayPIDs intList
	fs.Var(&gatewayPIDs, "gateway-pids", "process IDs of the gateways at --url, comma-separated: their memory (RSS, PSS, anonymous) is read from /proc as well")
	topics := fs.Int("topics", 1000, "topics of the zipf mix, and of --soak")
	settle := fs.Duration("settle", 15*time.Second, "idle time before the gateway is measured")
	broadcasts := fs.Int("broadcasts", 20, "events broadcast to the shared topic")
	gap := fs.Duration("gap", 500*time.Millisecond, "time between broadcasts; with baselines, between one server's broadcast and the next server's, which also waits for the receipts of the one before")
	unicastRate := fs.Int("unicast-rate", 5000, "with --mix own or pair: events per second, each to one connection's own topic (a sample spaced over all of them when there are fewer events than connections)")
	unicastFor := fs.Duration("unicast-for", 30*time.Second, "with --mix own or pair: how long to publish unicast events")
	capacity := fs.Bool("capacity", false, "end each server's run (Centrifugo's too, published to through its HTTP API's batch) with the capacity phase: --conns connections over --capacity-topics topics, the publish rate raised until the slowest receipt's p99 passes 100 ms or one is lost (a rate that fails is tried once more)")
	capTopics := fs.Int("capacity-topics", 100, "with --capacity: topics, each subscriber on one; the default gives each many subscribers (190 at 19,000 connections), so that fan-out, not what each event costs on its way in (paid once a topic), is what is measured")
	capStart := fs.Float64("capacity-start", 10000, "with --capacity: the first rate tried, deliveries per second (then doubled, then bisected)")
	capMax := fs.Float64("capacity-max", 2e6, "with --capacity: the highest rate tried, deliveries per second")
	capStep := fs.Duration("capacity-step", 3*time.Second, "with --capacity: how long each rate is published")
	capFor := fs.Duration("capacity-for", 90*time.Second, "with --capacity: no step starts after this long")
	stormN := fs.Int("storm", 10, "resume storm: drop every client, publish this many events, time their resumes (0: skip)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	report := fs.String("report", "", "also write the result to this directory: index.html, a page with the figures, memory per connection and every server's latency CDF that needs no other file, and result.json, the result as --json prints it with the command line and build")
	var soak soakFlags
	soak.register(fs)
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if *prepareHost {
		return bench.PrepareHost(*conns, *processes, stdout)
	}
	switch *mix {
	case "shared", "own", "pair", "zipf":
	default:
		fmt.Fprintf(stderr, "wsbus bench: unknown --mix %q: want shared, own, pair or zipf\n", *mix)
		return errUsage
	}
	var kinds []string
	if *baselines != "" {
		kinds = strings.Split(*baselines, ",")
	}
	for _, k := range append(kinds, *baselineServer) {
		if k != "" && k != bench.Naive && k != bench.Floor && (k != bench.Centrifugo || k == *baselineServer) {
			fmt.Fprintf(stderr, "wsbus bench: unknown baseline %q: want %s, %s or (in --baselines) %s\n", k, bench.Naive, bench.Floor, bench.Centrifugo)
			return errUsage
		}
		if k == bench.Centrifugo && *centrifugoURL == "" {
			fmt.Fprintln(stderr, "wsbus bench: the centrifugo baseline needs --centrifugo-url")
			return errUsage
		}
	}
	gateways := urls.split()
	if len(gateways) == 0 {
		gateways = []string{"ws://127.0.0.1:8080/v1/ws"}
	}
	rdb, err := c.client(0)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if *baselineServer != "" {
		return serveBaseline(*baselineServer, *listen, rdb, c.prefix, stdout)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := bench.Config{
		URL: gateways[0], MoreURLs: gateways[1:], Redis: rdb, Keys: streams.Keys{Prefix: c.prefix},
		Conns: *conns, PerWorker: *perWorker, Mix: *mix, Topics: *topics,
		Settle: *settle, Broadcasts: *broadcasts, Gap: *gap, Storm: *stormN,
		UnicastRate: *unicastRate, UnicastFor: *unicastFor,
		Capacity: *capacity, CapacityTopics: *capTopics, CapacityStart: *capStart, CapacityMax: *capMax,
		CapacityStep: *capStep, CapacityFor: *capFor,
		Executable: exe, WorkerArgs: []string{"bench", "--worker"}, Progress: stderr,
		Baselines: kinds, BaselineArgs: func(kind string) []string {
			return append([]string{"bench", "--baseline-server", kind}, c.args()...)
		},
		CentrifugoURL: *centrifugoURL, CentrifugoAPIKey: *centrifugoKey,
		GatewayPIDs: gatewayPIDs,
	}
	if soak.on {
		if *report != "" {
			fmt.Fprintln(stderr, "wsbus bench: --report is for the measurements, not --soak")
			return errUsage
		}
		return runSoak(cfg, soak, *asJSON, stdout)
	}
	res, err := bench.Run(context.Background(), cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		err = printJSON(stdout, res)
	} else {
		printBench(stdout, res)
	}
	if err != nil || *report == "" {
		return err
	}
	return writeReport(*report, res, append([]string{os.Args[0], "bench"}, args...), stderr)
}

// writeReport writes the run's report to dir and says where on stderr.
func writeReport(dir string, res *bench.Comparison, command []string, stderr io.Writer) error {
	if err := bench.WriteReport(dir, bench.NewRunReport(res, command)); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	fmt.Fprintf(stderr, "bench: report in %s\n", filepath.Join(dir, "index.html"))
	return nil
}

// serveBaseline serves a baseline until SIGTERM, after printing its
// address on stdout for the bench that started it.
func serveBaseline(kind, listen string, rdb redis.UniversalClient, prefix string, stdout io.Writer) error {
	// Without TCP keepalive, as the gateway listens, and collecting as
	// often as the gateway does: memory per connection is compared.
	collectOften()
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", listen)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return bench.ServeBaseline(ctx, bench.BaselineConfig{
		Kind: kind, Listen: ln, Redis: rdb, Keys: streams.Keys{Prefix: prefix},
	})
}

// printBench prints the comparison's table of figures.
func printBench(w io.Writer, cmp *bench.Comparison) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t := cmp.Table()
	for _, line := range append([][]string{t.Head}, t.Rows...) {
		fmt.Fprintln(tw, strings.Join(line, "\t")+"\t")
	}
	tw.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// intList is a flag of comma-separated integers.
type intList []int

func (l *intList) String() string { return fmt.Sprint([]int(*l)) }

func (l *intList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not a number", f)
		}
		*l = append(*l, n)
	}
	return nil
}
