package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wsbus/wsbus/internal/bench"
)

// TestBenchMillionScript runs go tool task bench-million's script small:
// 1,200 connections over 3 gateways, each on the shared topic and its
// own. Every phase must count every receipt (broadcasts to all, unicast
// to own topics, a storm resuming both topics of every connection) and
// the memory accounts must be filled in.
func TestBenchMillionScript(t *testing.T) {
	report := t.TempDir()
	cmd := exec.Command("bash", "../bench/million.sh")
	cmd.Env = append(os.Environ(), "WSBUS_BIN="+wsbusBin, "CONNS=1200", "PER_GATEWAY=400", "SETTLE=1s",
		"BROADCASTS=3", "GAP=300ms", "UNICAST_RATE=500", "UNICAST_FOR=1s", "REPORT="+report)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("million.sh: %v\n%s", err, out)
	}
	for _, want := range []string{"host: fs.file-max", "3 gateways ready", "kernel:", "clients: RSS", "gateways in all: RSS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the output does not say %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(report, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cmp bench.Comparison
	if err := json.Unmarshal(b, &cmp); err != nil {
		t.Fatal(err)
	}
	if len(cmp.Results) != 1 {
		t.Fatalf("%d results, want the gateway's alone", len(cmp.Results))
	}
	r := cmp.Results[0]
	if r.Gateways != 3 || r.Conns != 1200 || r.Failed != 0 || r.Mix != "pair" || r.Workers != 3 {
		t.Errorf("gateways %d, conns %d, failed %d, mix %q, workers %d; want 3, 1200, 0, pair, 3", r.Gateways, r.Conns, r.Failed, r.Mix, r.Workers)
	}
	if b := r.Broadcast; b == nil || b.Receipts != 3*1200 || b.Lost != 0 {
		t.Errorf("broadcast = %+v, want 3,600 receipts, 0 lost", b)
	}
	if u := r.Unicast; u == nil || u.Sent < 500 || int64(u.Received) != u.Sent || u.Lost != 0 {
		t.Errorf("unicast = %+v, want every event received", u)
	}
	if s := r.Storm; s == nil || !s.Done || s.Clients != 1200 || s.Lost != 0 || s.Duplicates != 0 || s.NotRecovered != 0 || s.Failed != 0 {
		t.Errorf("storm = %+v, want all 1,200 caught up, nothing lost, twice or not recovered", s)
	}
	m := r.Machine
	// The kernel's figures are machine-wide: other tests' sockets come
	// and go meanwhile, so only the processes' own are checked.
	if m == nil || m.Gateways == nil || m.Gateways.PSS <= 0 || m.Clients.RSS <= 0 || m.Conns != 1200 {
		t.Errorf("machine = %+v, want the gateways' and clients' memory for 1,200 connections", m)
	}
}

// TestBenchScriptsRefuseBadCounts: a count that is not a whole number is
// refused in one line before anything starts (no Redis, no gateway).
func TestBenchScriptsRefuseBadCounts(t *testing.T) {
	for _, c := range []struct{ script, env string }{
		{"million.sh", "CONNS=3k"},
		{"million.sh", "PER_GATEWAY=0"},
		{"run.sh", "CONNS=19,000"},
		{"fleet.sh", "GATEWAYS=six"},
	} {
		cmd := exec.Command("bash", "../bench/"+c.script)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
			name, _, _ := strings.Cut(kv, "=")
			return name == "CONNS" || name == "PER_GATEWAY" || name == "GATEWAYS"
		})
		cmd.Env = append(cmd.Env, "WSBUS_BIN=/nonexistent", c.env)
		out, err := cmd.CombinedOutput()
		name, value, _ := strings.Cut(c.env, "=")
		want := "bench: " + name + "=" + value + ": want a whole number above 0"
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.HasPrefix(string(out), want) || strings.Count(string(out), "\n") != 1 {
			t.Errorf("%s %s: %v, output %q; want exit 2 and only %q", c.env, c.script, err, out, want)
		}
	}
}
