package bench

import (
	"os"
	"strings"
	"testing"
)

func TestParseSockstat(t *testing.T) {
	b := []byte("sockets: used 18174\nTCP: inuse 18160 orphan 0 tw 168 alloc 18160 mem 272\nUDP: inuse 0 mem 9\n")
	sockets, buffers := parseSockstat(b)
	if sockets != 18160 || buffers != 272*float64(os.Getpagesize()) {
		t.Errorf("parseSockstat = %v sockets, %v bytes; want 18160 and 272 pages", sockets, buffers)
	}
}

func TestParseSlabinfo(t *testing.T) {
	b := []byte(`slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
TCP                19966  21008   2368   13    8 : tunables    0    0    0 : slabdata   1616   1616      0
filp               20907  21063    192   21    1 : tunables    0    0    0 : slabdata   1003   1003      0
`)
	c := parseSlabinfo(b)
	if len(c) != 2 || c["TCP"] != 19966*2368 || c["filp"] != 20907*192 {
		t.Errorf("parseSlabinfo = %v", c)
	}
}

// TestReadHostHere reads this machine: the figures every Linux has are
// there.
func TestReadHostHere(t *testing.T) {
	h := readHost()
	if h.Available <= 0 || h.Slab <= 0 {
		t.Errorf("readHost = %+v: no MemAvailable or Slab", h)
	}
	m, ok := readProcMemory(os.Getpid())
	if !ok || m.RSS <= 0 || m.PSS <= 0 || m.Anon <= 0 || m.PSS > m.RSS {
		t.Errorf("readProcMemory(self) = %+v, %v", m, ok)
	}
}

// TestPrepareHostRefusesWhatMemoryCannotHold asks for more connections
// than any machine here holds: refused with the figures, before any
// limit is touched.
func TestPrepareHostRefusesWhatMemoryCannotHold(t *testing.T) {
	var out strings.Builder
	err := PrepareHost(1_000_000_000, 10, &out)
	if err == nil || !strings.Contains(err.Error(), "1000000000 connections need about") || !strings.Contains(err.Error(), "use fewer connections") {
		t.Fatalf("PrepareHost(a billion) = %v, want a refusal that says what it needs", err)
	}
	if out.Len() > 0 {
		t.Errorf("it printed %q before refusing: nothing should have been checked or changed", out.String())
	}
}
