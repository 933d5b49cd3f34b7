package bench

import (
	"fmt"
	"time"
)

// Table is a comparison's figures as text, the gateway first: a row per
// figure, its name and then a cell per server and one per baseline (the
// gateway's figure divided by the baseline's, "-" where there is none).
// wsbus bench prints it and the report shows it.
type Table struct {
	Head []string   // "", the servers, then "wsbus/<baseline>" for each baseline
	Rows [][]string // the figure's name, then the cells
}

// Table returns c's figures.
func (c *Comparison) Table() Table {
	var t Table
	gw := c.Results[0]
	t.Head = []string{""}
	for _, r := range c.Results {
		t.Head = append(t.Head, r.Server)
	}
	for _, r := range c.Results[1:] {
		t.Head = append(t.Head, "wsbus/"+r.Server)
	}
	if gw.Gateways > 1 {
		t.Rows = append(t.Rows, []string{"gateways", fmt.Sprint(gw.Gateways)})
	}
	row := func(name, ratio string, value func(*Result) string) {
		line := []string{name}
		for _, r := range c.Results {
			line = append(line, value(r))
		}
		for _, r := range c.Results[1:] {
			cell := "-"
			if v, ok := c.Ratios[r.Server][ratio]; ok {
				cell = fmt.Sprintf("%.2f", v)
			}
			line = append(line, cell)
		}
		t.Rows = append(t.Rows, line)
	}
	row("connections (failed)", "", func(r *Result) string { return fmt.Sprintf("%d (%d)", r.Conns, r.Failed) })
	row("upgrades/s", "", func(r *Result) string { return fmt.Sprintf("%.0f", r.UpgradesSec) })
	row("RSS per connection", "rss_per_conn", func(r *Result) string { return fmt.Sprintf("%.0f B", r.PerConn.RSSBytes) })
	row("heap per connection", "heap_per_conn", func(r *Result) string { return fmt.Sprintf("%.0f B", r.PerConn.HeapBytes) })
	row("heap objects per connection", "", func(r *Result) string { return fmt.Sprintf("%.1f", r.PerConn.HeapObjects) })
	row("goroutines per connection", "", func(r *Result) string { return fmt.Sprintf("%.4f", r.PerConn.Goroutines) })
	row("fds per connection", "", func(r *Result) string { return fmt.Sprintf("%.3f", r.PerConn.FDs) })
	if gw.Conns >= 100000 {
		row("time to connect all", "", func(r *Result) string { return r.ConnectTook.Round(100 * time.Millisecond).String() })
	}
	if gw.Machine != nil {
		mc := func(f func(*Machine) string) func(*Result) string {
			return phase(func(r *Result) *Machine { return r.Machine }, f)
		}
		if gw.Machine.Gateways != nil {
			row("gateways' PSS in all, per connection", "", mc(func(m *Machine) string {
				if m.Gateways == nil {
					return "-"
				}
				return fmt.Sprintf("%.0f B", m.Gateways.PSS/float64(max(m.Conns, 1)))
			}))
		}
		row("clients' RSS per connection", "", mc(func(m *Machine) string { return fmt.Sprintf("%.0f B", m.ClientsPerConn) }))
		row("kernel per connection (both ends)", "", mc(func(m *Machine) string { return fmt.Sprintf("%.0f B", m.KernelPerConn) }))
		row("machine per connection, all in", "", mc(func(m *Machine) string { return fmt.Sprintf("%.0f B", m.UsedPerConn) }))
	}
	if gw.Broadcast != nil {
		bc := func(f func(*Latency) string) func(*Result) string {
			return phase(func(r *Result) *Latency { return r.Broadcast }, f)
		}
		row("broadcast last receipt p50", "broadcast_last_p50", bc(func(b *Latency) string { return ms(b.LastP50) }))
		row("broadcast last receipt p99", "broadcast_last_p99", bc(func(b *Latency) string { return ms(b.LastP99) }))
		row("broadcast last receipt max", "", bc(func(b *Latency) string { return ms(b.LastMax) }))
		row("broadcast all receipts p50", "", bc(func(b *Latency) string { return ms(b.AllP50) }))
		row("broadcast all receipts p99", "broadcast_all_p99", bc(func(b *Latency) string { return ms(b.AllP99) }))
		row("broadcast lost", "", bc(func(b *Latency) string { return fmt.Sprintf("%d of %d", b.Lost, int64(b.Receipts)+b.Lost) }))
	}
	if gw.Unicast != nil {
		uc := func(f func(*Unicast) string) func(*Result) string {
			return phase(func(r *Result) *Unicast { return r.Unicast }, f)
		}
		row("unicast events", "", uc(func(u *Unicast) string { return fmt.Sprintf("%d at %d/s", u.Sent, u.Rate) }))
		row("unicast p50", "unicast_p50", uc(func(u *Unicast) string { return ms(u.P50) }))
		row("unicast p99", "unicast_p99", uc(func(u *Unicast) string { return ms(u.P99) }))
		row("unicast max", "", uc(func(u *Unicast) string { return ms(u.Max) }))
		row("unicast lost", "", uc(func(u *Unicast) string {
			if u.LeftOut > 0 {
				return fmt.Sprintf("%d of %d (%d own topics of failed connections left out)", u.Lost, u.Sent, u.LeftOut)
			}
			return fmt.Sprintf("%d of %d", u.Lost, u.Sent)
		}))
	}
	if gw.Storm != nil {
		st := func(f func(*Storm) string) func(*Result) string {
			return phase(func(r *Result) *Storm { return r.Storm }, f)
		}
		row("resume storm, all caught up", "storm_took", st(func(s *Storm) string {
			if !s.Done {
				return "not all, " + ms(s.Took)
			}
			return ms(s.Took)
		}))
		row("resume storm not recovered/lost/dup", "", st(func(s *Storm) string {
			if !s.Done { // out of time: what was not in may be unfinished
				return fmt.Sprintf("%d/%d not in by the limit/%d", s.NotRecovered, s.Lost, s.Duplicates)
			}
			return fmt.Sprintf("%d/%d/%d", s.NotRecovered, s.Lost, s.Duplicates)
		}))
		row("resume storm reconnects failed (tried again)", "", st(func(s *Storm) string {
			return fmt.Sprintf("%d (%d)", s.Failed, s.Retried)
		}))
	}
	if gw.Capacity != nil {
		cp := func(f func(*Capacity) string) func(*Result) string {
			return phase(func(r *Result) *Capacity { return r.Capacity }, f)
		}
		row("capacity, deliveries/s (p99 < 100 ms, 0 lost)", "capacity", cp(func(c *Capacity) string { return fmt.Sprintf("%.0f", c.Sustained) }))
		row("capacity subscribers/topics, steps", "", cp(func(c *Capacity) string {
			return fmt.Sprintf("%d/%d, %d", c.Subscribers, c.Topics, len(c.Steps))
		}))
	}
	row("closed by the server during the phases", "", func(r *Result) string { return fmt.Sprint(r.Closed) })
	if gw.Trouble != nil {
		row("leases lost; canary events lost (late)", "", phase(func(r *Result) *Trouble { return r.Trouble }, func(tr *Trouble) string {
			return fmt.Sprintf("%d; %d (%d)", tr.LeasesLost, tr.CanaryLost, tr.CanaryLate)
		}))
	}
	return t
}

// phase formats a figure of one phase of a result, "-" where the server
// did not run that phase.
func phase[T any](of func(*Result) *T, f func(*T) string) func(*Result) string {
	return func(r *Result) string {
		if p := of(r); p != nil {
			return f(p)
		}
		return "-"
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
