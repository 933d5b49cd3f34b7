package bench

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// What a connection with both ends on this machine costs it, with margin,
// and a process (a gateway or a client worker) before its connections:
// PrepareHost refuses a run the memory cannot hold. Measured: see
// docs/BENCHMARKS.md, "A million".
const (
	hostBytesPerConn = 12 << 10
	hostBytesPerProc = 40 << 20
)

// Host is the machine's memory as the kernel accounts it (host_linux.go).
type Host struct {
	Available  float64            // MemAvailable, bytes
	Slab       float64            // the kernel's slab caches, bytes
	TCPSockets float64            // TCP sockets in use
	TCPBuffers float64            // bytes their buffers hold
	Caches     map[string]float64 // bytes per slab cache; nil without /proc/slabinfo (root only)
}

// ProcMemory is one process's resident memory, or a sum of several.
type ProcMemory struct {
	RSS  float64 `json:"rss_bytes"`
	PSS  float64 `json:"pss_bytes"`       // shared pages divided among the processes mapping them
	Anon float64 `json:"anonymous_bytes"` // heap, stacks: the process's own
}

func (m *ProcMemory) add(o ProcMemory) {
	m.RSS += o.RSS
	m.PSS += o.PSS
	m.Anon += o.Anon
}

// Machine is where the memory of a run went, measured from the idle
// servers to the connections held: the kernel's part, the clients', and
// the whole machine's.
type Machine struct {
	Conns int `json:"conns"`
	// TCPSockets is the growth of sockets in use: two per connection
	// (the client's end and the server's).
	TCPSockets float64 `json:"tcp_sockets"`
	// Slab is the growth of the kernel's slab caches (sockets, inodes,
	// files, epoll items) and Buffers of the TCP buffers, in bytes;
	// Caches the slab caches that grew most.
	Slab    float64            `json:"slab_bytes"`
	Buffers float64            `json:"tcp_buffer_bytes"`
	Caches  map[string]float64 `json:"slab_caches,omitempty"`
	// Used is the drop of MemAvailable: everything the connections cost
	// the machine, servers, clients, kernel and Redis together.
	Used float64 `json:"used_bytes"`
	// Clients is the client processes' memory while they hold the
	// connections; Gateways the servers' when their process IDs are known.
	Clients  ProcMemory  `json:"clients"`
	Gateways *ProcMemory `json:"gateways,omitempty"`
	// Per connection: the kernel (slab and buffers), the clients' RSS,
	// the machine's.
	KernelPerConn  float64 `json:"kernel_per_conn_bytes"`
	ClientsPerConn float64 `json:"clients_rss_per_conn_bytes"`
	UsedPerConn    float64 `json:"used_per_conn_bytes"`
}

// account compares the machine before the connections with after, while
// they are held.
func account(before, after Host, conns int, clients ProcMemory, gateways *ProcMemory) *Machine {
	m := &Machine{
		Conns:      conns,
		TCPSockets: after.TCPSockets - before.TCPSockets,
		Slab:       after.Slab - before.Slab,
		Buffers:    after.TCPBuffers - before.TCPBuffers,
		Used:       before.Available - after.Available,
		Clients:    clients,
		Gateways:   gateways,
	}
	if before.Caches != nil && after.Caches != nil {
		m.Caches = map[string]float64{}
		for name, b := range after.Caches {
			if grew := b - before.Caches[name]; grew > 0.02*m.Slab && grew > 0 {
				m.Caches[name] = grew
			}
		}
	}
	if conns > 0 {
		n := float64(conns)
		m.KernelPerConn = (m.Slab + m.Buffers) / n
		m.ClientsPerConn = clients.RSS / n
		m.UsedPerConn = m.Used / n
	}
	return m
}

// print writes the account in a few lines.
func (m *Machine) print(w io.Writer) {
	n := float64(max(m.Conns, 1))
	fmt.Fprintf(w, "bench: kernel: %.0f more TCP sockets; slab +%s, TCP buffers +%s: %.0f B per connection (both ends)\n",
		m.TCPSockets, mib(m.Slab), mib(m.Buffers), m.KernelPerConn)
	if len(m.Caches) > 0 {
		var parts []string
		for _, name := range slices.SortedFunc(maps.Keys(m.Caches), func(a, b string) int { return cmp.Compare(m.Caches[b], m.Caches[a]) }) {
			parts = append(parts, name+" "+strconv.FormatFloat(m.Caches[name]/n, 'f', 0, 64)+" B")
		}
		fmt.Fprintf(w, "bench: slab growth per connection: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "bench: clients: RSS %s (PSS %s, anonymous %s): %.0f B per connection\n", mib(m.Clients.RSS), mib(m.Clients.PSS), mib(m.Clients.Anon), m.ClientsPerConn)
	if g := m.Gateways; g != nil {
		fmt.Fprintf(w, "bench: gateways in all: RSS %s (PSS %s, anonymous %s): %.0f B RSS, %.0f B PSS per connection\n", mib(g.RSS), mib(g.PSS), mib(g.Anon), g.RSS/n, g.PSS/n)
	}
	fmt.Fprintf(w, "bench: machine: MemAvailable down %s: %.0f B per connection, everything included\n", mib(m.Used), m.UsedPerConn)
}

func mib(b float64) string { return strconv.FormatFloat(b/(1<<20), 'f', 1, 64) + " MiB" }
