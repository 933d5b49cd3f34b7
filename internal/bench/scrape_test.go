package bench

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestScrapeSumsTrouble reads wsbus's counters of trouble from /metrics,
// the canary's summed over its partition labels, and scrapeAll sums them
// over gateways.
func TestScrapeSumsTrouble(t *testing.T) {
	body := `# HELP wsbus_bus_leases_lost_total Partition leases found lost.
# TYPE wsbus_bus_leases_lost_total counter
wsbus_bus_leases_lost_total 3
wsbus_canary_lost_total{partition="0"} 2
wsbus_canary_lost_total{partition="1"} 5
wsbus_canary_late_total{partition="0"} 1
wsbus_canary_late_total{partition="7"} 4
wsbus_canary_lost_totally 100
process_open_fds 12
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	m, err := scrape(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if m.LeasesLost != 3 || m.CanaryLost != 7 || m.CanaryLate != 5 || m.FDs != 12 {
		t.Fatalf("scraped %+v: want 3 leases lost, canary 7 lost and 5 late, 12 fds", m)
	}
	sum, err := scrapeAll([]string{srv.URL, srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if sum.LeasesLost != 6 || sum.CanaryLost != 14 || sum.CanaryLate != 10 {
		t.Fatalf("summed %+v over two gateways: want 6, 14 and 10", sum)
	}
}

// TestTroubleUnreadableIsNoFailure: gateways whose /metrics cannot be read
// at the end of a run (busy, or gone) leave the run without trouble
// figures, saying so, instead of failing it after its phases; one that
// answers on a later try is read.
func TestTroubleUnreadableIsNoFailure(t *testing.T) {
	defer func(p time.Duration) { troublePause = p }(troublePause)
	troublePause = 0
	var out strings.Builder
	cfg := Config{Progress: &out}
	if got := trouble(cfg, []string{"http://127.0.0.1:1/metrics"}, Metrics{}); got != nil {
		t.Fatalf("trouble from an unreachable gateway = %+v, want none", got)
	}
	if !strings.Contains(out.String(), "could not be read, 3 tries") {
		t.Fatalf("progress %q does not say the counters could not be read", out.String())
	}
	var tries atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if tries.Add(1) < 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "wsbus_bus_leases_lost_total 4\n")
	}))
	defer srv.Close()
	if got := trouble(cfg, []string{srv.URL}, Metrics{LeasesLost: 1}); got == nil || got.LeasesLost != 3 {
		t.Fatalf("trouble on the third try = %+v, want 3 leases lost since the baseline", got)
	}
}
