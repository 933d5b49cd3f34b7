package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
)

// promBin finds a Prometheus binary (prometheus or promtool) on PATH; `go
// tool task prometheus` installs both. The tests never skip without them.
func promBin(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s not found: install it with `go tool task prometheus` (Debian: apt-get install prometheus)", name)
	}
	return p
}

// TestPrometheusRules checks deploy/prometheus with promtool: the scrape
// configuration and the alert rules are valid, and rules_test.yml's cases
// (each alert firing when it should, quiet otherwise) pass.
func TestPrometheusRules(t *testing.T) {
	promtool := promBin(t, "promtool")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "rules.yml"},
		{"test", "rules", "rules_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

var scrapeTargets = regexp.MustCompile(`(?m)^(\s*- targets: ).*$`)

// startPrometheus runs Prometheus with deploy/prometheus/prometheus.yml,
// its targets replaced by targets and its intervals by one second, until
// the test ends, and returns its HTTP API's base URL.
func startPrometheus(tb testing.TB, targets []string) string {
	tb.Helper()
	conf, err := os.ReadFile("../../deploy/prometheus/prometheus.yml")
	if err != nil {
		tb.Fatal(err)
	}
	if !scrapeTargets.Match(conf) {
		tb.Fatal("deploy/prometheus/prometheus.yml has no `- targets:` line")
	}
	quoted, _ := json.Marshal(targets)
	conf = scrapeTargets.ReplaceAll(conf, []byte("${1}"+string(quoted)))
	conf = regexp.MustCompile(`(?m)^(\s*(scrape|evaluation)_interval:).*$`).ReplaceAll(conf, []byte("${1} 1s"))
	dir := tb.TempDir()
	rules, err := os.ReadFile("../../deploy/prometheus/rules.yml")
	if err != nil {
		tb.Fatal(err)
	}
	for name, b := range map[string][]byte{"prometheus.yml": conf, "rules.yml": rules} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(tb))
	cmd := exec.Command(promBin(tb, "prometheus"), "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting prometheus: %v", err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("prometheus log:\n%s", log.String())
		}
	})
	api := "http://" + addr
	waitOK(tb, api+"/-/ready", 20*time.Second)
	return api
}

// promQuery runs an instant query and returns how many series it gave.
func promQuery(api, expr string) (int, error) {
	resp, err := http.Get(api + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s: %s", expr, r.Error)
	}
	return len(r.Data.Result), nil
}

// dashboardExprs returns every query of deploy/grafana/wsbus-dashboard.json.
func dashboardExprs(tb testing.TB) []string {
	tb.Helper()
	b, err := os.ReadFile("../../deploy/grafana/wsbus-dashboard.json")
	if err != nil {
		tb.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		tb.Fatalf("deploy/grafana/wsbus-dashboard.json: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			tb.Errorf("panel %q has no query", p.Title)
		}
		for _, t := range p.Targets {
			exprs = append(exprs, t.Expr)
		}
	}
	return exprs
}

// TestDashboardQueriesReturnData runs a real Prometheus with
// deploy/prometheus/prometheus.yml scraping two gateways that serve
// resuming clients while events are published, and asks it every query of
// the Grafana dashboard: each must return data, so the dashboard uses only
// metrics the gateways export, under their names.
func TestDashboardQueriesReturnData(t *testing.T) {
	f := newFleet(t, "a", "b")
	f.waitBalanced(10*time.Second, "a", "b")
	clients := f.clients(1)
	pb := f.publish()
	api := startPrometheus(t, []string{f.nodes["a"].addr, f.nodes["b"].addr})
	exprs := dashboardExprs(t)
	testutil.Eventually(t, 30*time.Second, func() error {
		var empty []string
		for _, e := range exprs {
			n, err := promQuery(api, e)
			if err != nil {
				return err
			}
			if n == 0 {
				empty = append(empty, e)
			}
		}
		if len(empty) > 0 {
			return fmt.Errorf("%d of %d dashboard queries return no data: %s", len(empty), len(exprs), strings.Join(empty, "; "))
		}
		return nil
	})
	// The alerts evaluate on the same data without error, and a healthy
	// fleet raises none.
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(api + "/api/v1/rules")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name      string `json:"name"`
						Health    string `json:"health"`
						LastError string `json:"lastError"`
						State     string `json:"state"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return err
		}
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				n++
				if rule.Health != "ok" {
					return fmt.Errorf("rule %s: health %q %s", rule.Name, rule.Health, rule.LastError)
				}
				if rule.State == "firing" {
					t.Errorf("alert %s fires on a healthy fleet", rule.Name)
				}
			}
		}
		if n == 0 {
			return fmt.Errorf("no rules loaded")
		}
		return nil
	})
	f.verify(pb.finish(), clients)
}
