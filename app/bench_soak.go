package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/wsbus/wsbus/internal/bench"
)

// soakFlags are wsbus bench's flags for --soak.
type soakFlags struct {
	on          bool
	duration    time.Duration
	rate, churn int
	readyFile   string
	clientNames stringList
	debugAddrs  stringList
	profileDir  string
}

func (s *soakFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.on, "soak", false, "run a soak instead of the measurements: --conns connections over the --url gateways on --topics topics, --rate events/s and --churn topic switches/s for --duration, every event checked at every client, the gateways read at the start and the end (internal/bench/soak.sh restarts them meanwhile); exit status 1 when anything was lost, repeated or grew")
	fs.DurationVar(&s.duration, "duration", 30*time.Minute, "with --soak: how long to publish and switch topics")
	fs.IntVar(&s.rate, "rate", 300, "with --soak: events published per second, each to a topic picked at random")
	fs.IntVar(&s.churn, "churn", 20, "with --soak: connections per second that switch to another topic (unsubscribe, subscribe)")
	fs.StringVar(&s.readyFile, "ready-file", "", "with --soak: a file written when the steady phase begins (soak.sh starts its restart clock there)")
	fs.Var(&s.debugAddrs, "debug-addrs", "with --soak and --profile-dir: each gateway's --debug-addr, in --url order")
	fs.StringVar(&s.profileDir, "profile-dir", "", "with --soak: save each gateway's goroutine profile at the start and the end readings here (gatewayN-start.txt, gatewayN-end.txt)")
	fs.Var(&s.clientNames, "client-names", "with --soak: each gateway's Redis client name (client_name in its --redis URL), in --url order, so that its Redis connections are counted apart from its other fds")
}

// errSoakFailed is returned when a soak ran and found something wrong.
var errSoakFailed = errors.New("soak failed")

func runSoak(cfg bench.Config, s soakFlags, asJSON bool, stdout io.Writer) error {
	res, err := bench.Soak(context.Background(), bench.SoakConfig{
		Config: cfg, Duration: s.duration, Rate: s.rate, Churn: s.churn,
		ReadyFile: s.readyFile, ClientNames: s.clientNames.split(),
		DebugAddrs: s.debugAddrs.split(), ProfileDir: s.profileDir,
	})
	if err != nil {
		return err
	}
	if asJSON {
		err = printJSON(stdout, res)
	} else {
		printSoak(stdout, res)
	}
	if err == nil && len(res.Failures) > 0 {
		err = fmt.Errorf("%w: %d problems (see above)", errSoakFailed, len(res.Failures))
	}
	return err
}

func printSoak(w io.Writer, r *bench.SoakResult) {
	fmt.Fprintf(w, "soak: %d connections (%d workers) over %d gateways, %d topics, %d events/s, %d switches/s, %v\n\n",
		r.Conns, r.Workers, len(r.Gateways), r.Topics, r.Rate, r.Churn, r.Duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "gateway\trestarts\tup\tconnections\tgoroutines\tidle pool workers\tother goroutines\tfds\tRedis conns\tother fds\tRSS\t")
	known := func(n int) string {
		if n < 0 {
			return "?"
		}
		return fmt.Sprint(n)
	}
	reading := func(name, restarts, up string, x bench.SoakReading) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.0f\t%s\t%s\t%.0f\t%s\t%.0f\t%.1f MiB\t\n", name, restarts, up, x.Conns, x.Goroutines,
			known(x.IdleWorkers), known(x.OtherGoroutines), x.FDs, known(x.Redis), x.OtherFDs, x.RSS/(1<<20))
	}
	for i, g := range r.Gateways {
		name := fmt.Sprintf("%d", i+1)
		if i == r.LongestLived {
			name += " (longest-lived)"
		}
		reading(name+" start", "", "", g.Start)
		reading(name+" end", fmt.Sprint(g.Restarts), g.Uptime.String(), g.End)
	}
	tw.Flush()
	c := r.Check
	fmt.Fprintf(w, "\nevents published %d; delivered %d of %d due over %d subscriptions (%d held at the end)\n", r.Published, c.Delivered, c.Due, c.Spans, c.Open)
	fmt.Fprintf(w, "lost %d, duplicated %d, wrong seq %d, spans with other IDs than published %d, not recovered %d, unexpected %d, server errors %d\n",
		c.Lost, c.Dups, c.Bad, c.Mismatched, r.NotRecovered, r.Unexpected, r.ServerErrors)
	fmt.Fprintf(w, "reconnects %d, not back %d, not settled at the end %d, topic switches %d\n", r.Reconnects, r.GaveUp, r.NotReady, r.Churned)
	fmt.Fprintf(w, "delivery delay p50 %s, p99 %s, max %s\n", ms(r.P50), ms(r.P99), ms(r.Max))
	fmt.Fprintf(w, "growth allowed at equal connections: %d goroutines other than idle pool workers, %d fds other than WebSocket and Redis connections (each the least of %d readings)\n", r.GoroutineSlack, r.FDSlack, r.Samples)
	for _, p := range append(c.Problems, r.Notes...) {
		fmt.Fprintf(w, "  %s\n", p)
	}
	if len(r.Failures) == 0 {
		fmt.Fprintln(w, "PASS")
		return
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "FAIL: %s\n", f)
	}
}
