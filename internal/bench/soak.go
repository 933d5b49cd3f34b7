package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// SoakConfig describes a soak: connections held for a long time against
// gateways that are restarted meanwhile (by whoever started them: see
// internal/bench/soak.sh), with steady publishing and topic churn, every
// event checked at every client (soak_check.go). Of Config it uses URL,
// MoreURLs, Redis, Keys, Conns, PerWorker, Topics, Settle, Executable,
// WorkerArgs, Env and Progress.
type SoakConfig struct {
	Config
	// Duration is how long events are published and topics switched.
	Duration time.Duration
	// Rate is how many events a second are published, each to a topic
	// picked at random.
	Rate int
	// Churn is how many connections a second switch to another topic.
	Churn int
	// ReadyFile, when set, is written when the steady phase begins (the
	// connections are open and the gateways measured): the restart clock
	// of soak.sh starts there.
	ReadyFile string
	// ClientNames are the gateways' Redis client names (client_name in
	// their --redis URL), in the order of URL and MoreURLs: each one's
	// Redis connections are counted from CLIENT LIST and left out of its
	// fd figure, since go-redis keeps a pool that grows to its peaks and
	// closes idle connections only after 30 minutes. Without them the fd
	// figure includes the pool.
	ClientNames []string
	// DebugAddrs are the gateways' --debug-addr, in the order of URL and
	// MoreURLs: their goroutine profiles tell the pool's idle workers,
	// which come and go, from the goroutines that must not grow. With
	// ProfileDir, the profiles at the start and the end are saved there
	// (gatewayN-start.txt, -end.txt), to tell what grew. Without them the
	// goroutine check allows for a full pool (soakPoolWorkers).
	DebugAddrs []string
	ProfileDir string
	// Samples readings of each gateway, SampleGap apart, make each of its
	// figures at the start and the end. Zero means 5 and 1 s.
	Samples   int
	SampleGap time.Duration
}

// Fixed slack of the soak's growth check, at equal connection count: the
// least of the readings at the end against the least at the start. A
// quiet gateway's goroutines, but for its pool's idle workers
// (soak_profile.go), are a fixed set (one per owned partition, the same
// at the end since node IDs and so leases are the same, and one per
// background loop); its fds, but for WebSocket and Redis connections, are
// a fixed set too (listeners, epoll, the metrics scrape's connection). The
// slack is for a request in flight at a reading.
const (
	SoakGoroutineSlack = 5
	SoakFDSlack        = 5
	// soakPoolWorkers is ws.Config.Workers's default, the most idle
	// workers a gateway's pool keeps: the goroutine slack when the
	// gateways' profiles cannot be read.
	soakPoolWorkers = 256
)

// How the soak reads a gateway and waits at the end.
const (
	soakCatchUpFor  = 3 * time.Minute  // for every connection back and every event delivered
	soakConnsBackIn = time.Minute      // for each gateway's connection count to be what it was
	soakProgress    = 30 * time.Second // between progress lines
	soakWatch       = 2 * time.Second  // between readings of the gateways' start times
)

// SoakResult is what a soak found.
type SoakResult struct {
	Conns    int           `json:"conns"`
	Workers  int           `json:"workers"`
	Topics   int           `json:"topics"`
	Duration time.Duration `json:"duration_ns"`
	Rate     int           `json:"rate"`
	Churn    int           `json:"churn"`
	// Failed connections did not open at the start.
	Failed   int           `json:"failed_connects"`
	Gateways []GatewaySoak `json:"gateways"`
	// LongestLived indexes the gateway whose process lived longest at the
	// end: restarted least, or longest ago.
	LongestLived int `json:"longest_lived"`

	Published uint64    `json:"published"`
	Check     SoakCheck `json:"check"` // delivered, lost, duplicated, ... over every span
	// Counted by the clients over the whole run.
	NotRecovered uint64 `json:"not_recovered"`
	Unexpected   uint64 `json:"unexpected"`
	ServerErrors uint64 `json:"server_errors"`
	Reconnects   uint64 `json:"reconnects"`
	GaveUp       uint64 `json:"gave_up"`
	Churned      uint64 `json:"churned"`
	NotReady     int    `json:"not_ready"` // connections not back or not settled at the end
	// Delivery delay, XADD to receipt, over every event received.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`

	GoroutineSlack int      `json:"goroutine_slack"`
	FDSlack        int      `json:"fd_slack"`
	Samples        int      `json:"samples"`            // readings of each figure, a second apart by default
	Notes          []string `json:"notes,omitempty"`    // the clients' first problems, with their time
	Failures       []string `json:"failures,omitempty"` // why the soak failed; empty when it passed
}

// GatewaySoak is one gateway's figures.
type GatewaySoak struct {
	URL      string        `json:"url"`
	Restarts int           `json:"restarts"` // process restarts seen during the run
	Uptime   time.Duration `json:"uptime_ns"`
	Start    SoakReading   `json:"start"` // after the connections settled
	End      SoakReading   `json:"end"`   // after the last restart settled
}

// SoakReading is a gateway's state read from its /metrics (and Redis's
// CLIENT LIST).
type SoakReading struct {
	Conns      float64 `json:"ws_connections"`
	Goroutines float64 `json:"goroutines"` // least of the samples
	// From the goroutine profile, -1 without DebugAddrs: goroutines other
	// than the pool's idle workers (the least of the samples), and the
	// idle workers at that sample.
	OtherGoroutines int     `json:"other_goroutines"`
	IdleWorkers     int     `json:"idle_pool_workers"`
	FDs             float64 `json:"open_fds"` // at the reading of OtherFDs
	Redis           int     `json:"redis_conns"`
	OtherFDs        float64 `json:"other_fds"` // least of soakSamples: FDs - Conns - Redis
	RSS             float64 `json:"rss_bytes"`
	Started         float64 `json:"start_time"` // process_start_time_seconds
}

// Soak runs a soak and checks it. It returns an error only when it could
// not run; what it found wrong is in the result's Failures.
func Soak(ctx context.Context, cfg SoakConfig) (*SoakResult, error) {
	urls := append([]string{cfg.URL}, cfg.MoreURLs...)
	switch {
	case cfg.Topics < 2:
		return nil, errors.New("bench: a soak needs at least 2 topics")
	case cfg.Duration <= 0 || cfg.Rate <= 0 || cfg.Churn < 0:
		return nil, errors.New("bench: a soak needs a duration and a rate")
	case len(cfg.ClientNames) > 0 && len(cfg.ClientNames) != len(urls):
		return nil, fmt.Errorf("bench: %d client names for %d gateways", len(cfg.ClientNames), len(urls))
	case len(cfg.DebugAddrs) > 0 && len(cfg.DebugAddrs) != len(urls):
		return nil, fmt.Errorf("bench: %d debug addresses for %d gateways", len(cfg.DebugAddrs), len(urls))
	}
	if cfg.PerWorker <= 0 {
		cfg.PerWorker = 18000
	}
	if cfg.Samples <= 0 {
		cfg.Samples = 5
	}
	if cfg.SampleGap <= 0 {
		cfg.SampleGap = time.Second
	}
	gws := make([]gateway, len(urls))
	for i, u := range urls {
		m, err := metricsURL(u)
		if err != nil {
			return nil, err
		}
		gws[i] = gateway{metrics: m, samples: cfg.Samples, gap: cfg.SampleGap}
		if len(cfg.ClientNames) > 0 {
			gws[i].clientName = cfg.ClientNames[i]
		}
		if len(cfg.DebugAddrs) > 0 {
			gws[i].profile = "http://" + cfg.DebugAddrs[i] + "/debug/pprof/goroutine?debug=1"
		}
		if len(cfg.DebugAddrs) > 0 && cfg.ProfileDir != "" {
			gws[i].profileTo = filepath.Join(cfg.ProfileDir, fmt.Sprintf("gateway%d-", i+1))
		}
	}
	n, err := streams.Partitions(ctx, cfg.Redis, cfg.Keys)
	if err != nil {
		return nil, err
	}
	res := &SoakResult{Conns: cfg.Conns, Topics: cfg.Topics, Duration: cfg.Duration, Rate: cfg.Rate, Churn: cfg.Churn,
		GoroutineSlack: SoakGoroutineSlack, FDSlack: SoakFDSlack, Samples: cfg.Samples}
	workers, err := startSoakWorkers(cfg, urls)
	defer func() {
		for _, w := range workers {
			_, _ = fmt.Fprintln(w.in, "quit")
			_ = w.in.Close()
			_ = w.cmd.Wait()
		}
	}()
	if err != nil {
		return nil, err
	}
	res.Workers = len(workers)
	start := time.Now()
	reports, err := collect(workers)
	if err != nil {
		return nil, err
	}
	for _, r := range reports {
		res.Failed += r.Failed
	}
	progress(cfg.Config, "soak: %d connections open (%d failed) in %v over %d gateways; %d topics over %d of %d partitions; settling %v",
		cfg.Conns-res.Failed, res.Failed, time.Since(start).Round(time.Millisecond), len(urls), cfg.Topics, partitionsCovered(cfg.Topics, n), n, cfg.Settle)
	time.Sleep(cfg.Settle)
	begin := make([]SoakReading, len(gws))
	for i := range gws {
		if begin[i], err = gws[i].read(ctx, cfg.Redis); err != nil {
			return nil, err
		}
		gws[i].saveProfile(cfg.Config, "start")
	}
	if cfg.ReadyFile != "" {
		if err := os.WriteFile(cfg.ReadyFile, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	pub := &publisher{rdb: cfg.Redis, keys: cfg.Keys, partitions: n, ids: make([][]string, cfg.Topics)}
	restarts, err := steady(ctx, cfg, workers, gws, begin, pub)
	if err != nil {
		return nil, err
	}
	res.Published = pub.sent.Load()
	progress(cfg.Config, "soak: publishing stopped: %d events; waiting for every connection to be back and caught up", res.Published)
	if res.NotReady, err = catchUp(cfg.Config, workers, pub.counts()); err != nil {
		return nil, err
	}
	end, err := settleEnd(ctx, cfg.Config, gws, begin, cfg.Redis)
	if err != nil {
		return nil, err
	}
	spans, err := ask[[]Span](workers, "spans")
	if err != nil {
		return nil, err
	}
	var all []Span
	for _, s := range spans {
		all = append(all, s...)
	}
	res.Check = checkSpans(all, pub.ids)
	if reports, err = collect(workers); err != nil {
		return nil, err
	}
	res.addReports(reports)
	for i, u := range urls {
		res.Gateways = append(res.Gateways, GatewaySoak{URL: u, Restarts: restarts[i], Start: begin[i], End: end[i],
			Uptime: time.Since(time.Unix(0, int64(end[i].Started*1e9))).Round(time.Second)})
		if end[i].Started < end[res.LongestLived].Started {
			res.LongestLived = i
		}
	}
	res.judge()
	return res, nil
}

// startSoakWorkers starts the worker processes, at least one per gateway,
// each with an equal share of the connections on topics soak:0, soak:1, ...
// in turn.
func startSoakWorkers(cfg SoakConfig, urls []string) ([]*workerProc, error) {
	topics := make([]string, cfg.Conns)
	for i := range topics {
		topics[i] = soakTopic(i % cfg.Topics)
	}
	n := max((cfg.Conns+cfg.PerWorker-1)/cfg.PerWorker, len(urls))
	n = (n + len(urls) - 1) / len(urls) * len(urls)
	var workers []*workerProc
	for i := range n {
		share := topics[i*cfg.Conns/n : (i+1)*cfg.Conns/n]
		w, err := startWorker(cfg.Config, Job{URL: urls[i%len(urls)], Sources: sourceIPs(i, len(share)), Topics: share,
			Soak: &SoakJob{Topics: cfg.Topics}})
		if err != nil {
			return workers, err
		}
		workers = append(workers, w)
	}
	return workers, nil
}

func partitionsCovered(topics, n int) int {
	seen := map[int]bool{}
	for i := range topics {
		seen[streams.Partition(soakTopic(i), n)] = true
	}
	return len(seen)
}

// steady publishes, switches topics and watches the gateways for restarts
// for cfg.Duration; it returns how often each gateway restarted.
func steady(ctx context.Context, cfg SoakConfig, workers []*workerProc, gws []gateway, begin []SoakReading, pub *publisher) ([]int, error) {
	started := make([]float64, len(gws))
	for i, r := range begin {
		started[i] = r.Started
	}
	restarts := make([]int, len(gws))
	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.run(pubCtx, cfg.Rate) }()
	t0 := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var churned int
	nextWatch, nextProgress := t0.Add(soakWatch), t0.Add(soakProgress)
	for time.Since(t0) < cfg.Duration {
		select {
		case err := <-pubDone:
			return nil, fmt.Errorf("publishing: %w", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		due := int(time.Since(t0).Seconds()*float64(cfg.Churn)) - churned
		if each := due / len(workers); each > 0 {
			if err := command(workers, "churn "+strconv.Itoa(each)); err != nil {
				return nil, err
			}
			churned += each * len(workers)
		}
		if time.Now().After(nextWatch) {
			nextWatch = time.Now().Add(soakWatch)
			for i, g := range gws {
				m, err := scrape(g.metrics)
				if err == nil && m.Started > 0 && m.Started != started[i] {
					started[i] = m.Started
					restarts[i]++
					progress(cfg.Config, "soak %v: gateway %d restarted (%d so far)", time.Since(t0).Round(time.Second), i+1, restarts[i])
				}
			}
		}
		if time.Now().After(nextProgress) {
			nextProgress = time.Now().Add(soakProgress)
			if err := soakProgressLine(cfg.Config, workers, time.Since(t0), pub.sent.Load()); err != nil {
				return nil, err
			}
		}
	}
	stopPub()
	if err := <-pubDone; err != nil {
		return nil, fmt.Errorf("publishing: %w", err)
	}
	return restarts, nil
}

func soakProgressLine(cfg Config, workers []*workerProc, at time.Duration, published uint64) error {
	reports, err := collect(workers)
	if err != nil {
		return err
	}
	var s SoakStats
	var received uint64
	for _, r := range reports {
		s.add(r.Soak)
		received += r.All.N
	}
	progress(cfg, "soak %v: published %d, received %d; lost %d, duplicated %d, bad seq %d, not recovered %d, unexpected %d, server errors %d; %d open, %d away, %d reconnects, %d switches",
		at.Round(time.Second), published, received, s.Lost, s.Dups, s.Bad, s.NotRecovered, s.Unexpected, s.ServerErrors, s.Open, s.Away, s.Reconnects, s.Churned)
	return nil
}

func (s *SoakStats) add(o *SoakStats) {
	if o == nil {
		return
	}
	s.Open += o.Open
	s.Away += o.Away
	s.Reconnects += o.Reconnects
	s.GaveUp += o.GaveUp
	s.Churned += o.Churned
	s.Lost += o.Lost
	s.Dups += o.Dups
	s.Bad += o.Bad
	s.NotRecovered += o.NotRecovered
	s.Unexpected += o.Unexpected
	s.ServerErrors += o.ServerErrors
}

// catchUp waits until every connection is back and settled and has every
// event published to its topic; it returns how many connections are not.
func catchUp(cfg Config, workers []*workerProc, counts []uint64) (int, error) {
	b, _ := json.Marshal(counts)
	cmd := "final " + string(b)
	t0 := time.Now()
	for {
		finals, err := ask[SoakFinal](workers, cmd)
		if err != nil {
			return 0, err
		}
		var f SoakFinal
		for _, x := range finals {
			f.Missing += x.Missing
			f.NotReady += x.NotReady
		}
		if f.Missing == 0 && f.NotReady == 0 || time.Since(t0) > soakCatchUpFor {
			progress(cfg, "soak: after %v: %d connections not back or not settled, %d events still due", time.Since(t0).Round(time.Millisecond), f.NotReady, f.Missing)
			return f.NotReady, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// settleEnd waits until each gateway holds as many connections as at the
// start (bounded), lets them settle as at the start, and reads them.
func settleEnd(ctx context.Context, cfg Config, gws []gateway, begin []SoakReading, rdb redis.UniversalClient) ([]SoakReading, error) {
	for t0 := time.Now(); time.Since(t0) < soakConnsBackIn; time.Sleep(time.Second) {
		back := 0
		for i, g := range gws {
			if m, err := scrape(g.metrics); err == nil && m.Conns == begin[i].Conns {
				back++
			}
		}
		if back == len(gws) {
			break
		}
	}
	progress(cfg, "soak: settling %v before the last reading", cfg.Settle)
	time.Sleep(cfg.Settle)
	end := make([]SoakReading, len(gws))
	for i := range gws {
		var err error
		if end[i], err = gws[i].read(ctx, rdb); err != nil {
			return nil, err
		}
		gws[i].saveProfile(cfg, "end")
	}
	return end, nil
}

// addReports takes the clients' counts and delays.
func (res *SoakResult) addReports(reports []Report) {
	var s SoakStats
	var h Histogram
	for _, r := range reports {
		s.add(r.Soak)
		h.Merge(r.All)
		res.Notes = append(res.Notes, r.Errors...)
		if r.Soak != nil {
			res.Notes = append(res.Notes, r.Soak.Notes...)
		}
	}
	res.NotRecovered, res.Unexpected, res.ServerErrors = s.NotRecovered, s.Unexpected, s.ServerErrors
	res.Reconnects, res.GaveUp, res.Churned = s.Reconnects, s.GaveUp, s.Churned
	res.P50, res.P99, res.Max = h.Quantile(0.5), h.Quantile(0.99), h.Quantile(1)
}

// judge fills Failures.
func (res *SoakResult) judge() {
	fail := func(format string, args ...any) { res.Failures = append(res.Failures, fmt.Sprintf(format, args...)) }
	c := res.Check
	if c.Failed() {
		fail("events: %d lost, %d duplicated, %d with a wrong seq, %d spans with IDs other than published, %d with events never published", c.Lost, c.Dups, c.Bad, c.Mismatched, c.Unknown)
	}
	if res.NotRecovered > 0 {
		fail("%d subscriptions answered recovered:false", res.NotRecovered)
	}
	if res.Unexpected > 0 {
		fail("%d events or answers for topics the connection did not hold", res.Unexpected)
	}
	if res.Failed > 0 || res.GaveUp > 0 || res.NotReady > 0 {
		fail("connections: %d failed to open, %d not back after a restart, %d not back or settled at the end", res.Failed, res.GaveUp, res.NotReady)
	}
	for i, g := range res.Gateways {
		if g.End.Conns != g.Start.Conns {
			fail("gateway %d: %.0f connections at the end, %.0f at the start: its growth is not comparable", i+1, g.End.Conns, g.Start.Conns)
			continue
		}
		if g.Start.OtherGoroutines >= 0 && g.End.OtherGoroutines >= 0 {
			if d := g.End.OtherGoroutines - g.Start.OtherGoroutines; d > SoakGoroutineSlack {
				fail("gateway %d: goroutines other than idle pool workers grew by %d (%d to %d), more than %d", i+1, d, g.Start.OtherGoroutines, g.End.OtherGoroutines, SoakGoroutineSlack)
			}
		} else if d := g.End.Goroutines - g.Start.Goroutines; d > SoakGoroutineSlack+soakPoolWorkers {
			fail("gateway %d: goroutines grew by %.0f (%.0f to %.0f), more than %d and a full worker pool", i+1, d, g.Start.Goroutines, g.End.Goroutines, SoakGoroutineSlack)
		}
		if d := g.End.OtherFDs - g.Start.OtherFDs; d > SoakFDSlack {
			fail("gateway %d: fds other than connections grew by %.0f (%.0f to %.0f), more than %d", i+1, d, g.Start.OtherFDs, g.End.OtherFDs, SoakFDSlack)
		}
	}
}

// gateway is one gateway under soak.
type gateway struct {
	metrics    string
	clientName string // its Redis client name; "" when not known
	samples    int
	gap        time.Duration
	profile    string // its goroutine profile's URL; "" when not known
	profileTo  string // where to save it: this and "start.txt" or "end.txt"; "" for nowhere
}

// profileClient fetches goroutine profiles on a connection of its own each
// time: one kept open would be a goroutine and an fd more at the end.
var profileClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// saveProfile saves g's goroutine profile, when asked for; a failure is
// reported, not fatal.
func (g gateway) saveProfile(cfg Config, when string) {
	if g.profileTo == "" {
		return
	}
	b, err := g.goroutines()
	if err == nil {
		err = os.WriteFile(g.profileTo+when+".txt", b, 0o644)
	}
	if err != nil {
		progress(cfg, "soak: saving the goroutine profile of %s: %v", g.profile, err)
	}
}

// goroutines reads g's goroutine profile.
func (g gateway) goroutines() ([]byte, error) {
	resp, err := profileClient.Get(g.profile)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s: %s", g.profile, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// read takes g.samples readings, g.gap apart, and keeps the least
// goroutines and the least fds other than connections: the worker pool's
// goroutines come and go, and so do Redis connections.
func (g gateway) read(ctx context.Context, rdb redis.UniversalClient) (SoakReading, error) {
	r := SoakReading{OtherGoroutines: -1, IdleWorkers: -1}
	for k := range g.samples {
		if k > 0 {
			time.Sleep(g.gap)
		}
		m, err := scrape(g.metrics)
		if err != nil {
			return r, err
		}
		redisConns := -1
		if g.clientName != "" {
			list, err := rdb.ClientList(ctx).Result()
			if err != nil {
				return r, fmt.Errorf("listing Redis clients: %w", err)
			}
			redisConns = countClients(list, g.clientName)
		}
		other := m.FDs - m.Conns - float64(max(redisConns, 0))
		if k == 0 || other < r.OtherFDs {
			r.OtherFDs, r.FDs, r.Redis = other, m.FDs, redisConns
		}
		if k == 0 || m.Goroutines < r.Goroutines {
			r.Goroutines = m.Goroutines
		}
		if g.profile != "" {
			b, err := g.goroutines()
			if err != nil {
				return r, err
			}
			total, idle, err := goroutineCounts(b)
			if err != nil {
				return r, fmt.Errorf("reading %s: %w", g.profile, err)
			}
			if k == 0 || total-idle < r.OtherGoroutines {
				r.OtherGoroutines, r.IdleWorkers = total-idle, idle
			}
		}
		r.Conns, r.RSS, r.Started = m.Conns, m.RSS, m.Started
	}
	return r, nil
}

// countClients counts the connections named name in Redis's CLIENT LIST
// answer: one line per connection, "id=.. addr=.. name=.. ...".
func countClients(list, name string) int {
	n := 0
	for line := range strings.Lines(list) {
		for field := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(field, "name="); ok {
				if v == name {
					n++
				}
				break
			}
		}
	}
	return n
}

// publisher XADDs the soak's events and keeps every ID Redis gave them.
type publisher struct {
	rdb        redis.UniversalClient
	keys       streams.Keys
	partitions int
	ids        [][]string // by topic, in publish order; read once run has returned
	sent       atomic.Uint64
}

// run publishes rate events a second to topics picked at random, spread
// evenly (what is due goes out every millisecond, pipelined), until ctx
// ends.
func (p *publisher) run(ctx context.Context, rate int) error {
	const step = time.Millisecond
	rng := rand.New(rand.NewPCG(3, 4))
	tick := time.NewTicker(step)
	defer tick.Stop()
	t0 := time.Now()
	var topics []int
	var cmds []*redis.StringCmd
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		due := uint64(time.Since(t0).Seconds() * float64(rate))
		if due <= p.sent.Load() {
			continue
		}
		topics, cmds = topics[:0], cmds[:0]
		pipe := p.rdb.Pipeline()
		next := map[int]uint64{}
		for range due - p.sent.Load() {
			t := rng.IntN(len(p.ids))
			next[t]++
			n := uint64(len(p.ids[t])) + next[t]
			topic := soakTopic(t)
			topics = append(topics, t)
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: p.keys.Ingress(streams.Partition(topic, p.partitions)),
				Values: []any{"topic", topic, "data", soakData(time.Now().UnixNano(), n)},
			}))
		}
		// Not ctx: a cancel in the middle would leave IDs unknown.
		execCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := pipe.Exec(execCtx)
		cancel()
		if err != nil {
			return err
		}
		for i, t := range topics {
			p.ids[t] = append(p.ids[t], cmds[i].Val())
		}
		p.sent.Add(uint64(len(topics)))
	}
}

// counts is how many events each topic was given.
func (p *publisher) counts() []uint64 {
	out := make([]uint64, len(p.ids))
	for t, ids := range p.ids {
		out[t] = uint64(len(ids))
	}
	return out
}
