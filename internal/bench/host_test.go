package bench

import (
	"bytes"
	"strings"
	"testing"
)

func TestAccount(t *testing.T) {
	before := Host{Available: 10 << 30, Slab: 1 << 30, TCPSockets: 10, TCPBuffers: 4096, Caches: map[string]float64{"TCP": 100, "filp": 50, "dentry": 1000}}
	after := Host{Available: 9 << 30, Slab: 1<<30 + 8000, TCPSockets: 14, TCPBuffers: 8192, Caches: map[string]float64{"TCP": 7100, "filp": 1050, "dentry": 1001}}
	m := account(before, after, 2, ProcMemory{RSS: 3000, PSS: 2000, Anon: 1000}, &ProcMemory{RSS: 4000})
	if m.TCPSockets != 4 || m.Slab != 8000 || m.Buffers != 4096 || m.Used != 1<<30 {
		t.Errorf("account = %+v", m)
	}
	if m.KernelPerConn != (8000+4096)/2 || m.ClientsPerConn != 1500 || m.UsedPerConn != (1<<30)/2 {
		t.Errorf("per connection: kernel %v, clients %v, used %v", m.KernelPerConn, m.ClientsPerConn, m.UsedPerConn)
	}
	if len(m.Caches) != 2 || m.Caches["TCP"] != 7000 || m.Caches["filp"] != 1000 {
		t.Errorf("caches that grew = %v, want TCP 7000 and filp 1000 (dentry's growth is below 2%%)", m.Caches)
	}
	var out bytes.Buffer
	m.print(&out)
	for _, want := range []string{"TCP 3500 B, filp 500 B", "6048 B per connection (both ends)", "1500 B per connection", "gateways in all"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed %q, want it to hold %q", out.String(), want)
		}
	}
}

func TestSampled(t *testing.T) {
	seen := map[int]bool{}
	for i := range 10 {
		seen[sampled(i, 10, 1000)] = true
	}
	if len(seen) != 10 || !seen[0] || !seen[900] {
		t.Errorf("10 events over 1000 connections went to %v, want 0, 100, ... 900", seen)
	}
	for i := range 25 {
		if got := sampled(i, 25, 10); got != i%10 {
			t.Errorf("sampled(%d, 25, 10) = %d, want round robin %d", i, got, i%10)
		}
	}
}

func TestParallelDials(t *testing.T) {
	for _, c := range []struct{ workers, each int }{{1, 256}, {8, 256}, {16, 128}, {52, 39}, {1000, 16}} {
		if got := parallelDials(c.workers); got != c.each {
			t.Errorf("parallelDials(%d) = %d, want %d", c.workers, got, c.each)
		}
	}
}
