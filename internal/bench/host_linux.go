//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// readHost reads the machine's memory as the kernel accounts it, from
// /proc/meminfo, /proc/net/sockstat and, when it can be read (root),
// /proc/slabinfo.
func readHost() Host {
	var h Host
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		eachKB(b, func(name string, v float64) {
			switch name {
			case "MemAvailable":
				h.Available = v
			case "Slab":
				h.Slab = v
			}
		})
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		h.TCPSockets, h.TCPBuffers = parseSockstat(b)
	}
	if b, err := os.ReadFile("/proc/slabinfo"); err == nil {
		h.Caches = parseSlabinfo(b)
	}
	return h
}

// parseSockstat reads the TCP line of /proc/net/sockstat: sockets in use
// and the pages their buffers hold, in bytes.
func parseSockstat(b []byte) (sockets, buffers float64) {
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("TCP: "))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i+1], 64)
			if err != nil {
				continue
			}
			switch f[i] {
			case "inuse":
				sockets = v
			case "mem":
				buffers = v * float64(os.Getpagesize())
			}
		}
	}
	return sockets, buffers
}

// parseSlabinfo reads the bytes each slab cache's objects take:
// active objects times object size.
func parseSlabinfo(b []byte) map[string]float64 {
	caches := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || strings.HasPrefix(f[0], "#") || f[0] == "slabinfo" {
			continue
		}
		active, err1 := strconv.ParseFloat(f[1], 64)
		size, err2 := strconv.ParseFloat(f[3], 64)
		if err1 == nil && err2 == nil {
			caches[f[0]] += active * size
		}
	}
	return caches
}

// readProcMemory reads a process's resident memory from
// /proc/PID/smaps_rollup: RSS, PSS (shared pages divided among the
// processes that map them, as the binary's code is over many processes
// of one binary) and anonymous memory (its own heap and stacks).
func readProcMemory(pid int) (ProcMemory, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return ProcMemory{}, false
	}
	var m ProcMemory
	eachKB(b, func(name string, v float64) {
		switch name {
		case "Rss":
			m.RSS = v
		case "Pss":
			m.PSS = v
		case "Anonymous":
			m.Anon = v
		}
	})
	return m, true
}

// eachKB calls fn with the name and the value in bytes of every
// "Name:   123 kB" line of b, the form of /proc/meminfo and smaps.
func eachKB(b []byte, fn func(name string, v float64)) {
	for line := range bytes.Lines(b) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(string(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte(" kB"))), 64)
		if err == nil {
			fn(string(name), kb*1024)
		}
	}
}

// PrepareHost checks that this machine can hold conns connections with
// both of their ends on it, held by procs processes (gateways and
// clients): enough memory (else an error that says how much is
// missing), and the kernel's limits, which it raises where they are short
// when it runs as root, saying what it changed; short limits it cannot
// raise are an error.
func PrepareHost(conns, procs int, out io.Writer) error {
	need := float64(conns)*hostBytesPerConn + float64(procs)*hostBytesPerProc
	avail := readHost().Available
	if avail < need {
		return fmt.Errorf("%d connections need about %.1f GiB of memory (%.0f KiB each, both ends, kernel included, and %d processes), and MemAvailable is %.1f GiB: use fewer connections",
			conns, need/(1<<30), float64(hostBytesPerConn)/1024, procs, avail/(1<<30))
	}
	fmt.Fprintf(out, "host: MemAvailable %.1f GiB, about %.1f GiB needed: enough\n", avail/(1<<30), need/(1<<30))
	c := int64(conns)
	limits := []struct {
		key  string
		want []int64 // the least each field may be; tcp_mem has three
		why  string
	}{
		{"fs/file-max", []int64{2*c + 200000}, "two sockets a connection, machine-wide"},
		{"net/core/somaxconn", []int64{4096}, "listen backlog of each gateway"},
		{"net/ipv4/tcp_max_syn_backlog", []int64{4096}, "handshakes waiting at each gateway"},
		{"net/core/netdev_max_backlog", []int64{65536}, "packets waiting for a core's network softirq: loopback traffic goes through it, and a broadcast is a burst of a packet a connection"},
		{"net/ipv4/tcp_mem", []int64{c, 2 * c, 3 * c}, "pages all TCP buffers may take before the kernel prunes them: a broadcast leaves a frame in every socket"},
		{"net/netfilter/nf_conntrack_max", []int64{2 * c}, "connection tracking, when the module is loaded"},
	}
	var short []string
	for _, l := range limits {
		path := "/proc/sys/" + l.key
		b, err := os.ReadFile(path)
		if err != nil {
			continue // not on this kernel (conntrack not loaded)
		}
		cur := strings.Fields(string(b))
		if len(cur) != len(l.want) {
			continue
		}
		next := make([]string, len(cur))
		raise := false
		for i, f := range cur {
			v, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return fmt.Errorf("reading %s: %q", path, b)
			}
			next[i] = strconv.FormatInt(max(v, l.want[i]), 10)
			raise = raise || v < l.want[i]
		}
		name := strings.ReplaceAll(l.key, "/", ".")
		if !raise {
			fmt.Fprintf(out, "host: %s = %s: enough\n", name, strings.Join(cur, " "))
			continue
		}
		if err := os.WriteFile(path, []byte(strings.Join(next, " ")), 0); err != nil {
			short = append(short, fmt.Sprintf("%s is %s, needs %s (%s): %v", name, strings.Join(cur, " "), strings.Join(next, " "), l.why, err))
			continue
		}
		fmt.Fprintf(out, "host: %s raised from %s to %s (%s); it stays so until the next boot (or undo it: sysctl -w %s=%q)\n",
			name, strings.Join(cur, " "), strings.Join(next, " "), l.why, name, strings.Join(cur, " "))
	}
	if len(short) > 0 {
		return fmt.Errorf("kernel limits too low (run as root to have them raised):\n  %s", strings.Join(short, "\n  "))
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Max < 19000 {
		return fmt.Errorf("the open-files limit is %d per process; the million's processes hold about 19,300 sockets each: raise it (ulimit -n 20000)", rl.Max)
	}
	return nil
}
