package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// Config describes one bench run against a running gateway.
type Config struct {
	// URL is the gateway's WebSocket endpoint, e.g. ws://127.0.0.1:8080/v1/ws.
	URL string
	// More gateways of the same bus: connections are spread over URL and
	// these, one worker process or more each, and the idle cost is summed
	// over all of them. Baselines are measured for one gateway only.
	MoreURLs []string
	// Redis and Keys are the bus the gateway serves; bench XADDs to it.
	Redis redis.UniversalClient
	Keys  streams.Keys
	// Conns is how many connections to open, spread over workers of at
	// most PerWorker connections (the fd limit is 20,000 per process).
	Conns, PerWorker int
	// Mix assigns topics: "shared" (one topic), "own" (one each), "pair"
	// (each connection on the shared topic and its own) or "zipf" (Zipf
	// over Topics topics).
	Mix    string
	Topics int
	// Settle is how long connections sit idle before the gateway is
	// measured.
	Settle time.Duration
	// Broadcasts is how many events go to the shared topic, Gap apart
	// (with baselines, taking turns over the servers: broadcast).
	Broadcasts int
	Gap        time.Duration
	// Storm, when positive, drops every connection at once, publishes
	// Storm events to the shared topic, and has every client resume.
	Storm int
	// UnicastRate events per second, each to one connection's own topic
	// (mix "own"), for UnicastFor.
	UnicastRate int
	UnicastFor  time.Duration
	// Capacity, when set, ends each server's run with the capacity phase
	// (capacity.go): Conns connections spread over CapacityTopics topics,
	// events published at a rising rate, from CapacityStart deliveries a
	// second up to CapacityMax, CapacityStep at each, until the slowest
	// receipt's p99 passes 100 ms or a receipt is lost; no step starts
	// after CapacityFor. Zero values mean 100 topics (capacity.go says
	// why), 10,000/s, 2,000,000/s, 3 s and 90 s.
	Capacity       bool
	CapacityTopics int
	CapacityStart  float64
	CapacityMax    float64
	CapacityStep   time.Duration
	CapacityFor    time.Duration
	// Executable runs a worker: Executable WorkerArgs... (wsbus bench --worker).
	Executable string
	WorkerArgs []string
	Env        []string // added to the environment of workers and baselines
	// Baselines are measured beside the gateway (Run says in what order),
	// each in a process started as Executable BaselineArgs(kind)... that
	// prints its address.
	Baselines    []string
	BaselineArgs func(kind string) []string
	// CentrifugoURL is the WebSocket endpoint of the Centrifugo measured
	// when Baselines holds Centrifugo, and CentrifugoAPIKey the key of its
	// HTTP server API.
	CentrifugoURL, CentrifugoAPIKey string
	// GatewayPIDs, when given, are the process IDs of the gateways at URL
	// and MoreURLs, whose memory is then read from /proc as well.
	GatewayPIDs []int
	// Progress receives one line per step.
	Progress io.Writer
}

// Result is what a run measured.
type Result struct {
	Server   string `json:"server"` // wsbus, naive or floor
	Gateways int    `json:"gateways"`
	Conns    int    `json:"conns"`
	Workers  int    `json:"workers"`
	Mix      string `json:"mix"`
	Failed   int    `json:"failed"`
	// FailedWhy holds a few of the errors of the connections that failed.
	FailedWhy []string `json:"failed_why,omitempty"`
	// Closed is the connections the servers closed (or that were reset)
	// after their subscription, during the phases before the storm; Why
	// holds a few of the reasons the clients saw.
	Closed      int           `json:"closed_by_server"`
	Why         []string      `json:"closed_why,omitempty"`
	UpgradesSec float64       `json:"upgrades_per_sec"`
	ConnectTook time.Duration `json:"connect_took_ns"` // from the first dial until every connection was open or had failed
	Baseline    Metrics       `json:"baseline"`
	Loaded      Metrics       `json:"loaded"`
	PerConn     struct {
		RSSBytes    float64 `json:"rss_bytes"`
		HeapBytes   float64 `json:"heap_bytes"`
		HeapObjects float64 `json:"heap_objects"`
		Goroutines  float64 `json:"goroutines"`
		FDs         float64 `json:"fds"`
	} `json:"per_conn"`
	Broadcast *Latency `json:"broadcast,omitempty"`
	Storm     *Storm   `json:"resume_storm,omitempty"`
	// Trouble is what the gateways counted of their own over the phases
	// (wsbus only): leases lost, canary events lost and late.
	Trouble  *Trouble  `json:"trouble,omitempty"`
	Unicast  *Unicast  `json:"unicast,omitempty"`
	Capacity *Capacity `json:"capacity,omitempty"`
	// Machine is where the memory went while the connections were held:
	// kernel, clients, the whole machine (Linux).
	Machine *Machine `json:"machine,omitempty"`
}

// Trouble is the growth of wsbus's counters of trouble over a run's
// phases, summed over the gateways.
type Trouble struct {
	LeasesLost int `json:"leases_lost"`
	CanaryLost int `json:"canary_lost"` // counted lost: a hole, overtaken, or not in within --canary-timeout
	CanaryLate int `json:"canary_late"` // of those, arrived after all
}

// Unicast is what a unicast run measured.
type Unicast struct {
	Rate     int           `json:"rate"`
	For      time.Duration `json:"for_ns"`
	Sent     int64         `json:"sent"`
	Received uint64        `json:"received"`
	Lost     int64         `json:"lost"`
	LeftOut  int           `json:"left_out,omitempty"` // own topics of connections that failed to connect, not published to
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
	Max      time.Duration `json:"max_ns"`
	Hist     *Histogram    `json:"hist,omitempty"` // every receipt's delay
}

// Storm is what a resume storm measured.
type Storm struct {
	Clients      int           `json:"clients"`
	Missed       int           `json:"missed_each"`
	Took         time.Duration `json:"took_ns"` // from the reconnects' start until every client had every missed event
	Done         bool          `json:"done"`    // all caught up within the time allowed
	NotRecovered int           `json:"not_recovered"`
	// Lost counts the missed events not received. When Done is false the
	// storm ran out of time and it counts those not received by then:
	// resumes unfinished, or events lost; the run cannot tell them apart.
	Lost       int64  `json:"lost"`
	Duplicates uint64 `json:"duplicates"`
	Failed     int    `json:"failed_reconnects"`  // after reconnectTries each
	Retried    int    `json:"retried_reconnects"` // tries after the first, of clients that resumed or failed
}

// Latency is the delay from XADD to receipt.
type Latency struct {
	Events   int           `json:"events"`
	Receipts uint64        `json:"receipts"`
	Lost     int64         `json:"lost"` // expected receipts that never came
	LastP50  time.Duration `json:"last_p50_ns"`
	LastP99  time.Duration `json:"last_p99_ns"`
	LastMax  time.Duration `json:"last_max_ns"`
	AllP50   time.Duration `json:"all_p50_ns"`
	AllP99   time.Duration `json:"all_p99_ns"`
	AllMax   time.Duration `json:"all_max_ns"`
	// LastHist holds each event's slowest receipt, AllHist every receipt:
	// the distributions the figures above are read from, which the
	// report plots.
	LastHist *Histogram `json:"last_hist,omitempty"`
	AllHist  *Histogram `json:"all_hist,omitempty"`
}

// Metrics is the gateway's own view of itself, read from /metrics.
type Metrics struct {
	RSS        float64 `json:"rss_bytes"`
	Heap       float64 `json:"heap_inuse_bytes"`
	HeapObjs   float64 `json:"heap_objects"`
	Goroutines float64 `json:"goroutines"`
	FDs        float64 `json:"open_fds"`
	Conns      float64 `json:"ws_connections,omitempty"` // the gateway's wsbus_ws_connections
	Started    float64 `json:"start_time,omitempty"`     // process_start_time_seconds: a change is a restart

	// wsbus's own counters of trouble, summed over partitions.
	LeasesLost float64 `json:"leases_lost,omitempty"` // wsbus_bus_leases_lost_total
	CanaryLost float64 `json:"canary_lost,omitempty"` // wsbus_canary_lost_total
	CanaryLate float64 `json:"canary_late,omitempty"` // wsbus_canary_late_total
}

type workerProc struct {
	conns int // connections it dials
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
}

// Comparison is a run over the gateway and the baselines, one after the
// other on the same machine.
type Comparison struct {
	Results []*Result `json:"results"` // the gateway first
	// Ratios holds, for each baseline, the gateway's figure divided by
	// the baseline's: below 1 the gateway does better, except capacity,
	// where above 1 it does.
	Ratios map[string]map[string]float64 `json:"ratios,omitempty"`
}

// Run measures the gateway at cfg.URL, then each of cfg.Baselines started
// with cfg.BaselineArgs, with the same phases. Every server's connections
// are opened and measured idle in turn, and stay open: the broadcasts then
// take turns over all the servers (broadcast), and the later phases run
// for one server after the other, each closing its connections when done.
func Run(ctx context.Context, cfg Config) (*Comparison, error) {
	if cfg.Storm > 0 && cfg.Mix == "shared" && cfg.Broadcasts == 0 {
		return nil, errors.New("bench: the resume storm needs broadcasts first: clients resume from the last event they received")
	}
	if cfg.PerWorker <= 0 {
		cfg.PerWorker = 18000
	}
	urls := append([]string{cfg.URL}, cfg.MoreURLs...)
	var stages []*stage
	defer func() {
		for _, st := range stages {
			st.close()
		}
	}()
	progress(cfg, "measuring the gateway at %s", strings.Join(urls, ", "))
	gw := &stage{server: "wsbus", urls: urls, space: "bench:"}
	stages = append(stages, gw)
	if err := gw.open(ctx, cfg); err != nil {
		return nil, err
	}
	if len(urls) > 1 && len(cfg.Baselines) > 0 {
		progress(cfg, "baselines skipped: they are measured against a single gateway")
		cfg.Baselines = nil
	}
	for i, kind := range cfg.Baselines {
		space := topicSpace(fmt.Sprintf("bench:s%d.", i+1))
		if kind == Centrifugo {
			space = "bench:" // a server of its own, and its namespace
		}
		st := &stage{server: kind, space: space, first: stages[len(stages)-1].next()}
		stages = append(stages, st)
		if err := openOther(ctx, cfg, st); err != nil {
			return nil, fmt.Errorf("baseline %s: %w", kind, err)
		}
	}
	if cfg.Broadcasts > 0 && (cfg.Mix == "shared" || cfg.Mix == "pair") {
		if err := broadcast(ctx, cfg, stages); err != nil {
			return nil, err
		}
	}
	cmp := &Comparison{}
	for i, st := range stages {
		if phases := st.later(cfg); len(stages) > 1 && len(phases) > 0 {
			progress(cfg, "%s: %s", st.server, strings.Join(phases, ", "))
		}
		if err := st.finish(ctx, cfg); err != nil {
			if i > 0 {
				err = fmt.Errorf("baseline %s: %w", st.server, err)
			}
			return nil, err
		}
		st.close()
		cmp.Results = append(cmp.Results, st.res)
		if i == 0 {
			continue
		}
		if cmp.Ratios == nil {
			cmp.Ratios = map[string]map[string]float64{}
		}
		cmp.Ratios[st.server] = ratios(cmp.Results[0], st.res)
	}
	return cmp, nil
}

// stage is one server under measurement, from its first connection to the
// end of its last phase.
type stage struct {
	server string
	urls   []string
	// space is the start of the names of the stage's topics, its own so
	// that the servers on the bus's one Redis (the gateway and the naive
	// and floor baselines) deliver only their own stage's events.
	space topicSpace
	first int // the index of its first worker among all the run's: its source addresses

	metricsURLs []string
	res         *Result
	publish     publishFunc
	workers     []*workerProc
	failedOwn   map[string]bool // own topics of connections that failed to connect: unicast leaves them out
	received    uint64          // receipts credited to the broadcast rounds so far (awaitRound)
	counted     uint64          // receipts counted by the end of the last round
	stop        func()          // stops the server's process, when the bench started it
}

// subscribers is how many of the stage's connections are open.
func (st *stage) subscribers() int64 { return int64(st.res.Conns - st.res.Failed) }

// canResume reports whether the stage's server resumes a client from its
// cursor: all but the floor, which only writes live events.
func (st *stage) canResume() bool { return st.server != Floor }

// unicasts and storms report whether the stage has the unicast phase and
// the resume storm: Centrifugo is not measured in unicast (it is compared
// on idle cost, broadcast, storm and capacity), the floor has no storm (it
// does not resume).
func (st *stage) unicasts(cfg Config) bool {
	return cfg.UnicastRate > 0 && (cfg.Mix == "own" || cfg.Mix == "pair") && st.server != Centrifugo
}

func (st *stage) storms(cfg Config) bool {
	return cfg.Storm > 0 && (cfg.Mix == "shared" || cfg.Mix == "pair") && st.canResume()
}

// later names the phases the stage runs after the broadcast (finish).
func (st *stage) later(cfg Config) []string {
	var phases []string
	for _, p := range []struct {
		name string
		runs bool
	}{{"unicast", st.unicasts(cfg)}, {"resume storm", st.storms(cfg)}, {"capacity", cfg.Capacity}} {
		if p.runs {
			phases = append(phases, p.name)
		}
	}
	return phases
}

// next is the index of the first worker of a stage after this one.
func (st *stage) next() int { return st.first + st.res.Workers }

// close stops the stage's workers and its server, if the bench started
// it; it may be called again.
func (st *stage) close() {
	stopWorkers(st.workers)
	st.workers = nil
	if st.stop != nil {
		st.stop()
		st.stop = nil
	}
}

// openBaseline starts a baseline server process, which st.close stops,
// and opens st's connections to it.
func openBaseline(ctx context.Context, cfg Config, st *stage) error {
	cmd := exec.Command(cfg.Executable, cfg.BaselineArgs(st.server)...)
	if cfg.Env != nil {
		cmd.Env = append(os.Environ(), cfg.Env...)
	}
	cmd.Stderr = cfg.Progress
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting: %w", err)
	}
	st.stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		return fmt.Errorf("it printed no address: %v", sc.Err())
	}
	st.urls = []string{"ws://" + sc.Text() + "/v1/ws"}
	progress(cfg, "measuring the %s baseline at %s", st.server, st.urls[0])
	return st.open(ctx, cfg)
}

// ratios divides the gateway's figures by a baseline's.
func ratios(gw, base *Result) map[string]float64 {
	r := map[string]float64{}
	put := func(name string, a, b float64) {
		if b > 0 && a > 0 {
			r[name] = a / b
		}
	}
	put("rss_per_conn", gw.PerConn.RSSBytes, base.PerConn.RSSBytes)
	put("heap_per_conn", gw.PerConn.HeapBytes, base.PerConn.HeapBytes)
	if gw.Broadcast != nil && base.Broadcast != nil {
		put("broadcast_last_p50", float64(gw.Broadcast.LastP50), float64(base.Broadcast.LastP50))
		put("broadcast_last_p99", float64(gw.Broadcast.LastP99), float64(base.Broadcast.LastP99))
		put("broadcast_all_p99", float64(gw.Broadcast.AllP99), float64(base.Broadcast.AllP99))
	}
	if gw.Unicast != nil && base.Unicast != nil {
		put("unicast_p50", float64(gw.Unicast.P50), float64(base.Unicast.P50))
		put("unicast_p99", float64(gw.Unicast.P99), float64(base.Unicast.P99))
	}
	if gw.Storm != nil && base.Storm != nil {
		put("storm_took", float64(gw.Storm.Took), float64(base.Storm.Took))
	}
	if gw.Capacity != nil && base.Capacity != nil {
		put("capacity", gw.Capacity.Sustained, base.Capacity.Sustained)
	}
	return r
}

// open opens the stage's connections to its servers (st.urls) and
// measures them idle.
func (st *stage) open(ctx context.Context, cfg Config) error {
	for _, u := range st.urls {
		m, err := metricsURL(u)
		if err != nil {
			return err
		}
		st.metricsURLs = append(st.metricsURLs, m)
	}
	res := &Result{Server: st.server, Gateways: len(st.urls), Conns: cfg.Conns, Mix: cfg.Mix}
	st.res = res
	var err error
	if res.Baseline, err = scrapeAll(st.metricsURLs); err != nil {
		return err
	}
	topics := st.space.assign(cfg.Conns, cfg.Mix, cfg.Topics)
	var own []string
	if cfg.Mix == "pair" {
		own = st.space.assign(cfg.Conns, "own", 0)
	}
	if st.publish, err = publisherFor(ctx, cfg, st.server, st.urls[0]); err != nil {
		return err
	}
	before := readHost()
	start := time.Now()
	if st.workers, err = startWorkers(cfg, st.urls, topics, own, protocol(st.server), st.first); err != nil {
		return err
	}
	res.Workers = len(st.workers)
	if err := awaitDialed(cfg, st.workers, start); err != nil {
		return err
	}
	reports, err := collect(st.workers)
	if err != nil {
		return err
	}
	st.failedOwn = map[string]bool{}
	for _, r := range reports {
		res.Failed += r.Failed
		for _, t := range r.FailedOwn {
			st.failedOwn[t] = true
		}
		if r.Failed > 0 && len(res.FailedWhy) < 5 {
			res.FailedWhy = append(res.FailedWhy, r.Errors...)
		}
	}
	res.ConnectTook = time.Since(start)
	res.UpgradesSec = float64(cfg.Conns-res.Failed) / res.ConnectTook.Seconds()
	settle := settleFor(cfg, st.server)
	progress(cfg, "%d connections open (%d failed) in %v; settling %v", cfg.Conns-res.Failed, res.Failed, res.ConnectTook.Round(time.Millisecond), settle)
	if res.Failed > 0 {
		progress(cfg, "connections that failed, a few of the errors: %q", res.FailedWhy)
	}
	time.Sleep(settle)
	if res.Loaded, err = scrapeAll(st.metricsURLs); err != nil {
		return err
	}
	res.Machine = account(before, readHost(), cfg.Conns-res.Failed, workersMemory(st.workers), gatewaysMemory(cfg, st.server))
	if cfg.Progress != nil {
		res.Machine.print(cfg.Progress)
	}
	open := float64(cfg.Conns - res.Failed)
	res.PerConn.RSSBytes = (res.Loaded.RSS - res.Baseline.RSS) / open
	res.PerConn.HeapBytes = (res.Loaded.Heap - res.Baseline.Heap) / open
	res.PerConn.HeapObjects = (res.Loaded.HeapObjs - res.Baseline.HeapObjs) / open
	res.PerConn.Goroutines = (res.Loaded.Goroutines - res.Baseline.Goroutines) / open
	res.PerConn.FDs = (res.Loaded.FDs - res.Baseline.FDs) / open
	progress(cfg, "idle: %.0f B RSS, %.0f B heap in %.1f objects, %.4f goroutines, %.3f fds per connection", res.PerConn.RSSBytes, res.PerConn.HeapBytes, res.PerConn.HeapObjects, res.PerConn.Goroutines, res.PerConn.FDs)
	return nil
}

// finish runs the stage's phases after the broadcast that cfg asks for
// (the storm only when the server can resume).
func (st *stage) finish(ctx context.Context, cfg Config) error {
	res := st.res
	var err error
	if st.unicasts(cfg) {
		if res.Unicast, err = unicast(ctx, cfg, st); err != nil {
			return err
		}
	}
	reports, err := collect(st.workers)
	if err != nil {
		return err
	}
	for _, r := range reports {
		res.Closed += r.Closed
		if r.Closed > 0 && len(res.Why) < 5 {
			res.Why = append(res.Why, r.Errors...)
		}
	}
	if res.Closed > 0 {
		progress(cfg, "%d connections were closed by the servers or reset: %q", res.Closed, res.Why)
	}
	if st.storms(cfg) {
		if res.Storm, err = storm(ctx, cfg, st); err != nil {
			return err
		}
	}
	if st.server == "wsbus" {
		res.Trouble = trouble(cfg, st.metricsURLs, res.Baseline)
	}
	if cfg.Capacity {
		stopWorkers(st.workers)
		st.workers = nil
		// The server may still hold the connections just reset: the
		// capacity phase's would then take it past its fd limit.
		if err := waitClosed(cfg, st.metricsURLs, res.Baseline.FDs); err != nil {
			return err
		}
		if res.Capacity, err = measureCapacity(ctx, cfg, st); err != nil {
			return err
		}
	}
	return nil
}

// baselineSettle is the longest the naive and floor baselines settle:
// they return their memory 3 to 6 s after the last upgrade
// (returnMemory), where the gateway's sweeper takes 5 to 10 s and
// Centrifugo has no such step (its runtime returns memory at its own
// pace), so those two settle the whole cfg.Settle.
const baselineSettle = 9 * time.Second

// settleFor is how long server's connections sit idle before it is
// measured.
func settleFor(cfg Config, server string) time.Duration {
	if server == Naive || server == Floor {
		return min(cfg.Settle, baselineSettle)
	}
	return cfg.Settle
}

// startWorkers starts the workers that open a connection for each of
// topics (and subscribe it to own's too, when own is not nil), spread
// over urls: every server gets a worker or more, each worker an equal
// share. first is the index of the first among all the run's workers,
// which gives each its own source addresses.
func startWorkers(cfg Config, urls, topics, own []string, proto string, first int) ([]*workerProc, error) {
	var workers []*workerProc
	n := max((len(topics)+cfg.PerWorker-1)/cfg.PerWorker, len(urls))
	n = (n + len(urls) - 1) / len(urls) * len(urls)
	for i := range n {
		from, to := i*len(topics)/n, (i+1)*len(topics)/n
		job := Job{URL: urls[i%len(urls)], Sources: sourceIPs(first+i, to-from), Topics: topics[from:to], Protocol: proto, Parallel: parallelDials(n)}
		if own != nil {
			job.Own = own[from:to]
		}
		w, err := startWorker(cfg, job)
		if err != nil {
			stopWorkers(workers)
			return nil, err
		}
		workers = append(workers, w)
	}
	return workers, nil
}

// inFlight bounds the handshakes all workers have in flight at once: a
// gateway cuts a connection whose handshake it has not finished 5 s after
// accepting it, and on a loaded machine a million's 52 gateways together
// finish about 1,000-3,000 a second.
const inFlight = 2048

// parallelDials is how many handshakes each of n workers has in flight:
// 256, or fewer so that all of them have at most inFlight.
func parallelDials(n int) int {
	return min(256, max(16, inFlight/max(n, 1)))
}

// stopWorkers has the workers reset their connections and waits for them
// to end.
func stopWorkers(workers []*workerProc) {
	for _, w := range workers {
		_, _ = io.WriteString(w.in, "quit\n")
		_ = w.in.Close()
		_ = w.cmd.Wait()
	}
}

// measureCapacity opens the capacity phase's connections in new workers,
// left in st.workers for st.close to stop, and runs the phase.
func measureCapacity(ctx context.Context, cfg Config, st *stage) (*Capacity, error) {
	if cfg.CapacityTopics <= 0 {
		cfg.CapacityTopics = defaultCapacityTopics
	}
	if cfg.CapacityStart <= 0 {
		cfg.CapacityStart = 10000
	}
	if cfg.CapacityMax <= 0 {
		cfg.CapacityMax = 2e6
	}
	if cfg.CapacityStep <= 0 {
		cfg.CapacityStep = 3 * time.Second
	}
	if cfg.CapacityFor <= 0 {
		cfg.CapacityFor = 90 * time.Second
	}
	topics := capacityTopics(cfg.Conns, cfg.CapacityTopics)
	publish, err := batchPublisherFor(ctx, cfg, st.server, st.urls[0])
	if err != nil {
		return nil, err
	}
	if st.workers, err = startWorkers(cfg, st.urls, topics, nil, protocol(st.server), st.first); err != nil {
		return nil, err
	}
	reports, err := collect(st.workers)
	if err != nil {
		return nil, err
	}
	failed := 0
	for _, r := range reports {
		failed += r.Failed
	}
	if failed > 0 {
		progress(cfg, "capacity: skipped: %d of %d connections failed", failed, len(topics))
		return &Capacity{Subscribers: len(topics), Ended: fmt.Sprintf("%d connections failed", failed)}, nil
	}
	progress(cfg, "capacity: %d connections open on %d topics", len(topics), cfg.CapacityTopics)
	return capacity(ctx, cfg, publish, st.workers, topics)
}

// waitClosed waits, up to 20 s, until the servers at metricsURLs hold
// no more open fds than before the connections (base), give or take 100.
func waitClosed(cfg Config, metricsURLs []string, base float64) error {
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		m, err := scrapeAll(metricsURLs)
		if err != nil {
			return err
		}
		if m.FDs <= base+100 {
			return nil
		}
		if time.Now().After(deadline) {
			progress(cfg, "the server still holds %.0f fds, %.0f before the connections", m.FDs, base)
			return nil
		}
	}
}

// broadcast publishes cfg.Broadcasts timestamped events to the shared
// topic of every stage's server, and gathers every receipt's delay.
//
// The servers take turns, event by event, so that each is measured over
// the same stretch of the run: this machine's speed drifts from one
// minute to the next by more than the servers differ (docs/BENCHMARKS.md,
// "What a run does"), and measuring them one after the other took that drift
// for a difference between them. Each round of turns goes over the
// servers in an order of its own, so that no server always follows the
// same one (whose work after a delivery, a collection for one, would
// fall on it). With more than one server, each event is also alone on
// the machine: the next is published cfg.Gap after it and once its
// receipts are in (awaitRound), so that no server's delivery slows
// another's. With one, events are cfg.Gap apart whatever comes, so a
// server slower than that shows its backlog.
func broadcast(ctx context.Context, cfg Config, stages []*stage) error {
	turns := len(stages) > 1
	if turns {
		for _, st := range stages {
			if _, err := st.awaitRound(0); err != nil {
				return err
			}
		}
	}
	order := rand.New(rand.NewPCG(3, 4)) // the same orders in every run
	for k := range cfg.Broadcasts {
		for _, i := range order.Perm(len(stages)) {
			st := stages[i]
			data, _ := json.Marshal(eventData{T: time.Now().UnixNano(), K: int64(k)})
			if err := st.publish(ctx, st.space.shared(), data); err != nil {
				return fmt.Errorf("%s: publishing broadcast %d: %w", st.server, k, err)
			}
			time.Sleep(cfg.Gap)
			if turns {
				if _, err := st.awaitRound(st.subscribers()); err != nil {
					return err
				}
			}
		}
	}
	for _, st := range stages {
		lat, err := gather(cfg, st.workers, st.subscribers())
		if err != nil {
			return err
		}
		st.res.Broadcast = lat
		progress(cfg, "%s: broadcast of %d events to %d subscribers: last receipt p50 %v p99 %v max %v; all receipts p50 %v p99 %v; lost %d",
			st.server, lat.Events, st.subscribers(), lat.LastP50, lat.LastP99, lat.LastMax, lat.AllP50, lat.AllP99, lat.Lost)
	}
	return nil
}

// A broadcast round (awaitRound) ends when no receipt came for roundQuiet.
const roundQuiet = time.Second

// awaitRound waits until the stage's open connections have each had one
// more receipt than st.received (want of them: none to take the count),
// none came for roundQuiet after some came since the last round (a
// server that closed slow clients sends them nothing more), or
// receiptsLimit passed. st.received then credits the round with all its
// receipts, so that any that come late are not taken for the next
// round's. It reports whether all came.
func (st *stage) awaitRound(want int64) (bool, error) {
	start := time.Now()
	changed, last := start, st.counted
	for {
		got, closed, err := countReceipts(st.workers)
		if err != nil {
			return false, err
		}
		if got != last {
			changed, last = time.Now(), got
		}
		target := st.received + uint64(max(0, want-closed))
		all := got >= target
		quiet := got > st.counted && time.Since(changed) > roundQuiet
		if all || quiet || time.Since(start) > receiptsLimit(want) {
			st.received, st.counted = max(got, target), got
			return all, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countReceipts sums the workers' receipts so far and the connections
// their servers closed, from their "count", which they answer without
// building a report.
func countReceipts(workers []*workerProc) (received uint64, closed int64, err error) {
	counts, err := ask[Count](workers, "count")
	for _, c := range counts {
		received += c.Received
		closed += int64(c.Closed)
	}
	return received, closed, err
}

// receiptsLimit is how long the receipts of a broadcast to subscribers
// are waited for: 10 s, and 50 µs a subscriber (this machine delivers
// about 70,000 a second, clients' reads included, so a broadcast to a
// million takes about 15 s).
func receiptsLimit(subscribers int64) time.Duration {
	return 10*time.Second + time.Duration(subscribers)*50*time.Microsecond
}

// broadcastQuiet is how long the broadcast phase waits for a receipt
// before it takes the ones not in as lost.
const broadcastQuiet = 4 * time.Second

// gather waits for the receipts of the broadcast phase's events at
// workers, and returns their delays.
func gather(cfg Config, workers []*workerProc, subscribers int64) (*Latency, error) {
	want := subscribers * int64(cfg.Broadcasts)
	// Receipts are waited for up to receiptsLimit, or until none came
	// for broadcastQuiet: a server that closed slow clients (the naive
	// one) will not send them the rest, and one that is seconds behind
	// is still sending. The wait asks only for counts: the reports, with
	// their histograms, are read once, at the end.
	deadline := time.Now().Add(receiptsLimit(subscribers))
	var before uint64
	changed := time.Now()
	for {
		got, _, err := countReceipts(workers)
		if err != nil {
			return nil, err
		}
		if got != before {
			before, changed = got, time.Now()
		}
		if int64(got) >= want || time.Now().After(deadline) || time.Since(changed) > broadcastQuiet {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	reports, err := collect(workers)
	if err != nil {
		return nil, err
	}
	lat := &Latency{Events: cfg.Broadcasts}
	var all Histogram
	last := map[int64]uint64{}
	for _, r := range reports {
		all.Merge(r.All)
		lat.Receipts += r.Received
		for k, us := range r.Last {
			last[k] = max(last[k], us)
		}
	}
	var lastReceipts Histogram
	for _, us := range last {
		lastReceipts.Record(time.Duration(us) * time.Microsecond)
	}
	lat.Lost = want - int64(lat.Receipts)
	lat.LastP50, lat.LastP99, lat.LastMax = lastReceipts.Quantile(0.5), lastReceipts.Quantile(0.99), lastReceipts.Quantile(1)
	lat.AllP50, lat.AllP99, lat.AllMax = all.Quantile(0.5), all.Quantile(0.99), all.Quantile(1)
	lat.LastHist, lat.AllHist = &lastReceipts, &all
	return lat, nil
}

// unicast publishes cfg.UnicastRate events a second to the connections'
// own topics, spread evenly over time (what is due is published every
// millisecond, pipelined) and over the connections (a sample spaced
// evenly over all of them when there are more connections than events),
// and gathers the delay of each receipt. The own topics of the stage's
// connections that failed to connect are left out.
func unicast(ctx context.Context, cfg Config, st *stage) (*Unicast, error) {
	workers, failed := st.workers, st.failedOwn
	n, err := streams.Partitions(ctx, cfg.Redis, cfg.Keys)
	if err != nil {
		return nil, err
	}
	topics := st.space.assign(cfg.Conns, "own", 0)
	topics = slices.DeleteFunc(topics, func(t string) bool { return failed[t] })
	if len(topics) == 0 {
		return nil, errors.New("unicast: every connection failed to connect: no own topic to publish to")
	}
	const step = time.Millisecond
	u := &Unicast{Rate: cfg.UnicastRate, For: cfg.UnicastFor, LeftOut: cfg.Conns - len(topics)}
	events := int(cfg.UnicastFor.Seconds()*float64(cfg.UnicastRate)) + 1
	start := time.Now()
	next := 0
	tick := time.NewTicker(step)
	defer tick.Stop()
	for ; time.Since(start) < cfg.UnicastFor; <-tick.C {
		due := int64(time.Since(start).Seconds()*float64(cfg.UnicastRate)) + 1
		pipe := cfg.Redis.Pipeline()
		for ; u.Sent < due; u.Sent++ {
			t := topics[sampled(next, events, len(topics))]
			next++
			data, _ := json.Marshal(eventData{T: time.Now().UnixNano(), K: kindUnicast})
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: cfg.Keys.Ingress(streams.Partition(t, n)), Values: []any{"topic", t, "data", data}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("publishing unicast events: %w", err)
		}
	}
	var h Histogram
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		reports, err := collect(workers)
		if err != nil {
			return nil, err
		}
		h = Histogram{}
		for _, r := range reports {
			h.Merge(r.Unicast)
		}
		if int64(h.N) >= u.Sent || time.Now().After(deadline) {
			break
		}
	}
	u.Received = h.N
	u.Lost = u.Sent - int64(h.N)
	u.P50, u.P99, u.Max = h.Quantile(0.5), h.Quantile(0.99), h.Quantile(1)
	u.Hist = &h
	progress(cfg, "unicast: %d events at %d/s over %d topics (%d own topics of failed connections left out): p50 %v p99 %v max %v; lost %d", u.Sent, u.Rate, len(topics), u.LeftOut, u.P50, u.P99, u.Max, u.Lost)
	return u, nil
}

// stormLimit is how long a storm of clients may take to catch up.
func stormLimit(clients int) time.Duration {
	return 30*time.Second + time.Duration(clients)*2*time.Millisecond
}

// storm drops every open client of stg, publishes cfg.Storm events, and
// times the reconnect of all of them until each has every missed event.
func storm(ctx context.Context, cfg Config, stg *stage) (*Storm, error) {
	workers, clients, failedBefore := stg.workers, int(stg.subscribers()), stg.res.Failed
	if err := command(workers, "drop"); err != nil {
		return nil, err
	}
	for range cfg.Storm {
		data, _ := json.Marshal(eventData{T: time.Now().UnixNano(), K: kindStorm})
		if err := stg.publish(ctx, stg.space.shared(), data); err != nil {
			return nil, fmt.Errorf("publishing while clients are away: %w", err)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the owner move them to history
	start := time.Now()
	if err := command(workers, "resume"); err != nil {
		return nil, err
	}
	st := &Storm{Clients: clients, Missed: cfg.Storm}
	want := uint64(clients) * uint64(cfg.Storm)
	// 30 s, and 2 ms a client: the limit only stops a run that hangs. A
	// million (104 processes on two cores) caught up in 16.5 minutes in
	// one run here; at 1 ms a client, 17 minutes, two others ran out of
	// time with five in six of them caught up.
	for deadline := start.Add(stormLimit(clients)); ; time.Sleep(20 * time.Millisecond) {
		counts, err := ask[Count](workers, "count")
		if err != nil {
			return nil, err
		}
		var got uint64
		resumed, failed, retried := 0, 0, 0
		st.NotRecovered, st.Duplicates = 0, 0
		for _, c := range counts {
			got += c.SinceResume
			resumed += c.Resumed
			failed += c.Failed
			retried += c.Retried
			st.NotRecovered += c.NotRecovered
			st.Duplicates += c.Duplicates
		}
		st.Failed = failed - failedBefore
		st.Retried = retried
		st.Took = time.Since(start)
		st.Lost = int64(want) - int64(got)
		if got >= want && resumed+st.Failed >= clients {
			st.Done = true
			break
		}
		if time.Now().After(deadline) {
			reports, err := collect(workers)
			if err != nil {
				return nil, err
			}
			var errs []string
			for _, r := range reports {
				errs = append(errs, r.Errors...)
			}
			progress(cfg, "resume storm timed out: %d of %d clients resumed, %d of %d events; errors: %q", resumed, clients, got, want, errs)
			break
		}
	}
	lost := "lost"
	if !st.Done {
		lost = "not received by the time limit (unfinished or lost)"
	}
	progress(cfg, "resume storm: %d clients, %d missed events each: all caught up %v in %v; %d not recovered, %d %s, %d duplicates, %d failed reconnects (%d tries again)",
		st.Clients, st.Missed, st.Done, st.Took.Round(time.Millisecond), st.NotRecovered, st.Lost, lost, st.Duplicates, st.Failed, st.Retried)
	if st.Failed > 0 {
		reports, err := collect(workers)
		if err != nil {
			return nil, err
		}
		var errs []string
		for _, r := range reports {
			errs = append(errs, r.Errors...)
		}
		progress(cfg, "resume storm: the failed reconnects said: %q", errs[:min(len(errs), 10)])
	}
	return st, nil
}

// sampled is the connection the i-th of events goes to, of n: round
// robin when every connection gets one, else spaced evenly over all n.
func sampled(i, events, n int) int {
	if events >= n {
		return i % n
	}
	return (i % events) * n / events
}

// awaitDialed waits for the workers to have dialed every connection,
// with a progress line every 2 seconds for a run that takes longer.
func awaitDialed(cfg Config, workers []*workerProc, start time.Time) error {
	want := 0
	for _, w := range workers {
		want += w.conns
	}
	for {
		counts, err := ask[Count](workers, "count")
		if err != nil {
			return err
		}
		done, failed := 0, 0
		for _, c := range counts {
			done += c.Connected + c.Failed
			failed += c.Failed
		}
		if done >= want {
			return nil
		}
		if since := time.Since(start); since > 2*time.Second {
			progress(cfg, "connecting: %d of %d open, %d failed, %.0f/s, %v", done-failed, want, failed, float64(done)/since.Seconds(), since.Round(time.Second))
		}
		time.Sleep(2 * time.Second)
	}
}

// workersMemory sums the client processes' memory.
func workersMemory(workers []*workerProc) ProcMemory {
	pids := make([]int, len(workers))
	for i, w := range workers {
		pids[i] = w.cmd.Process.Pid
	}
	return memoryOf(pids)
}

// gatewaysMemory sums the memory of the gateways in cfg.GatewayPIDs, when
// server is wsbus and they are known.
func gatewaysMemory(cfg Config, server string) *ProcMemory {
	if server != "wsbus" || len(cfg.GatewayPIDs) == 0 {
		return nil
	}
	m := memoryOf(cfg.GatewayPIDs)
	return &m
}

// memoryOf sums the memory of the processes pids (those it can read).
func memoryOf(pids []int) ProcMemory {
	var sum ProcMemory
	for _, pid := range pids {
		if m, ok := readProcMemory(pid); ok {
			sum.add(m)
		}
	}
	return sum
}

// command sends a command to every worker and reads each one's answer.
func command(workers []*workerProc, cmd string) error {
	for i, w := range workers {
		if _, err := io.WriteString(w.in, cmd+"\n"); err != nil {
			return fmt.Errorf("telling worker %d to %s: %w", i, cmd, err)
		}
	}
	for i, w := range workers {
		if !w.out.Scan() {
			return fmt.Errorf("worker %d ended during %s: %v", i, cmd, w.out.Err())
		}
	}
	return nil
}

// topicSpace is the start of the names of a stage's topics: "bench:"
// for the gateway's and Centrifugo's (whose namespace "bench" is the part
// before the colon), "bench:s1." and on for the baselines that share the
// gateway's Redis.
type topicSpace string

// shared is the topic every connection of the shared mixes is on.
func (sp topicSpace) shared() string { return string(sp) + "shared" }

// assign gives each of n connections its topic: the same shared one, one
// of its own, or (zipf) one of topics, drawn the same way in every run.
func (sp topicSpace) assign(n int, mix string, topics int) []string {
	out := make([]string, n)
	z := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, uint64(max(topics, 1)-1))
	for i := range out {
		switch mix {
		case "own":
			out[i] = string(sp) + strconv.Itoa(i)
		case "zipf":
			out[i] = string(sp) + "z" + strconv.FormatUint(z.Uint64(), 10)
		default:
			out[i] = sp.shared()
		}
	}
	return out
}

// perSource is how many connections dial from one source address: the
// kernel finds a free ephemeral port quickly only while few are taken.
const perSource = 1000

// sourceIPs gives worker i loopback source addresses of its own, one per
// perSource of its n connections.
func sourceIPs(i, n int) []string {
	var out []string
	for k := range (n + perSource - 1) / perSource {
		j := i*64 + k // a worker holds at most 64,000 connections
		out = append(out, fmt.Sprintf("127.%d.%d.%d", 1+j/62500, (j/250)%250, 1+j%250))
	}
	return out
}

func startWorker(cfg Config, job Job) (*workerProc, error) {
	cmd := exec.Command(cfg.Executable, cfg.WorkerArgs...)
	if cfg.Env != nil {
		cmd.Env = append(os.Environ(), cfg.Env...)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cfg.Progress
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting a bench worker: %w", err)
	}
	w := &workerProc{conns: len(job.Topics), cmd: cmd, in: in, out: bufio.NewScanner(out)}
	w.out.Buffer(make([]byte, 1<<20), 64<<20)
	b, _ := json.Marshal(job)
	if _, err := in.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	return w, nil
}

// collect asks every worker for a report (a worker answers once its
// connections are all dialed).
func collect(workers []*workerProc) ([]Report, error) {
	return ask[Report](workers, "report")
}

// ask sends cmd to every worker and decodes each one's answer.
func ask[T any](workers []*workerProc, cmd string) ([]T, error) {
	answers := make([]T, len(workers))
	for i, w := range workers {
		if _, err := io.WriteString(w.in, cmd+"\n"); err != nil {
			return nil, fmt.Errorf("asking worker %d: %w", i, err)
		}
	}
	name, _, _ := strings.Cut(cmd, " ")
	for i, w := range workers {
		if !w.out.Scan() {
			return nil, fmt.Errorf("worker %d ended: %v", i, w.out.Err())
		}
		if err := json.Unmarshal(w.out.Bytes(), &answers[i]); err != nil {
			return nil, fmt.Errorf("worker %d %s: %w", i, name, err)
		}
	}
	return answers, nil
}

func metricsURL(wsURL string) (string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "", fmt.Errorf("parsing --url: %w", err)
	}
	scheme := "http"
	if u.Scheme == "wss" {
		scheme = "https"
	}
	return scheme + "://" + u.Host + "/metrics", nil
}

// trouble reads what the gateways at urls counted of their own trouble
// since base. It is the run's last look at them, and they may still be
// busy (a storm that ran out of time leaves a million resumes going): it
// tries three times, troublePause apart, then says it could not, and the
// run goes on without it (nil).
func trouble(cfg Config, urls []string, base Metrics) *Trouble {
	var err error
	for try := range 3 {
		if try > 0 {
			time.Sleep(troublePause)
		}
		var end Metrics
		if end, err = scrapeAll(urls); err != nil {
			continue
		}
		t := &Trouble{
			LeasesLost: int(end.LeasesLost - base.LeasesLost),
			CanaryLost: int(end.CanaryLost - base.CanaryLost),
			CanaryLate: int(end.CanaryLate - base.CanaryLate),
		}
		progress(cfg, "gateways over the phases: %d partition leases lost; canary events %d counted lost, %d of them late",
			t.LeasesLost, t.CanaryLost, t.CanaryLate)
		return t
	}
	progress(cfg, "gateways over the phases: their counters could not be read, 3 tries: %v", err)
	return nil
}

// troublePause is the wait between trouble's tries.
var troublePause = 10 * time.Second

// scrapeAll sums the metrics of several servers.
func scrapeAll(urls []string) (Metrics, error) {
	var sum Metrics
	for _, u := range urls {
		m, err := scrape(u)
		if err != nil {
			return Metrics{}, err
		}
		sum.RSS += m.RSS
		sum.Heap += m.Heap
		sum.HeapObjs += m.HeapObjs
		sum.Goroutines += m.Goroutines
		sum.FDs += m.FDs
		sum.LeasesLost += m.LeasesLost
		sum.CanaryLost += m.CanaryLost
		sum.CanaryLate += m.CanaryLate
	}
	return sum, nil
}

// scrapeClient reads /metrics; its timeout keeps a soak going when a
// gateway being restarted leaves a request unanswered.
var scrapeClient = &http.Client{Timeout: 10 * time.Second}

// scrape reads the gateway's process and Go metrics.
func scrape(metricsURL string) (Metrics, error) {
	resp, err := scrapeClient.Get(metricsURL)
	if err != nil {
		return Metrics{}, fmt.Errorf("reading the gateway's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Metrics{}, fmt.Errorf("reading the gateway's metrics: %s answered %s", metricsURL, resp.Status)
	}
	var m Metrics
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			m.RSS = v
		case "go_memstats_heap_inuse_bytes":
			m.Heap = v
		case "go_memstats_heap_objects":
			m.HeapObjs = v
		case "go_goroutines":
			m.Goroutines = v
		case "process_open_fds":
			m.FDs = v
		case "wsbus_ws_connections":
			m.Conns = v
		case "process_start_time_seconds":
			m.Started = v
		case "wsbus_bus_leases_lost_total":
			m.LeasesLost = v
		}
		if labels, ok := strings.CutPrefix(name, "wsbus_canary_lost_total{"); ok && labels != "" {
			m.CanaryLost += v
		} else if labels, ok := strings.CutPrefix(name, "wsbus_canary_late_total{"); ok && labels != "" {
			m.CanaryLate += v
		}
	}
	return m, sc.Err()
}

func progress(cfg Config, format string, args ...any) {
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
	}
}
