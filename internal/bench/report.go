package bench

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// RunReport is what `wsbus bench --report DIR` writes: a run's comparison and
// how it was run, as DIR/result.json (the comparison's JSON, as --json
// prints it, with these fields beside it) and as DIR/index.html, a page
// with the table of figures, a bar chart of memory per connection and the
// latency CDF of every server, which needs nothing but itself to be read.
type RunReport struct {
	Command   string    `json:"command"` // the command line, quoted for a shell
	Date      time.Time `json:"date"`
	GoVersion string    `json:"go_version"`
	Revision  string    `json:"revision,omitempty"` // of the bench binary, "+dirty" when built from changed files
	CPUs      int       `json:"cpus"`
	*Comparison
}

// NewRunReport returns cmp's report, args being the command line that ran it.
func NewRunReport(cmp *Comparison, args []string) *RunReport {
	r := &RunReport{Command: shellJoin(args), Date: time.Now().UTC().Truncate(time.Second),
		GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Comparison: cmp}
	if info, ok := debug.ReadBuildInfo(); ok {
		var dirty bool
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				r.Revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && r.Revision != "" {
			r.Revision += "+dirty"
		}
	}
	return r
}

// WriteReport writes r to dir (made if missing) as index.html and
// result.json, replacing any earlier report there.
func WriteReport(dir string, r *RunReport) error {
	page, err := r.HTML()
	if err != nil {
		return err
	}
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("making the report's directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "result.json"), append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing result.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), page, 0o644); err != nil {
		return fmt.Errorf("writing index.html: %w", err)
	}
	return nil
}

//go:embed report.html
var reportHTML string

var reportPage = template.Must(template.New("report").Parse(reportHTML))

// reportPlot is one plot of the page, under its heading.
type reportPlot struct {
	Title, About string
	SVG          template.HTML
}

// HTML renders r's page.
func (r *RunReport) HTML() ([]byte, error) {
	var b bytes.Buffer
	err := reportPage.Execute(&b, struct {
		*RunReport
		Table Table
		Plots []reportPlot
	}{r, r.Table(), r.plots()})
	if err != nil {
		return nil, fmt.Errorf("rendering the report: %w", err)
	}
	return b.Bytes(), nil
}

// plots returns the memory bars, then a CDF for each delay that the run
// measured, each with a line for every server that has it.
func (r *RunReport) plots() []reportPlot {
	out := []reportPlot{{
		Title: "Memory per idle connection",
		About: "The growth of each server's RSS and Go heap in use from before the connections to after they settled, divided by their number. Fixed costs weigh more at fewer connections.",
		SVG:   memoryBars("memory per connection by server", r.Results),
	}}
	for _, c := range []struct {
		title, about, yTitle string
		hist                 func(*Result) *Histogram
	}{
		{"Broadcast: the slowest receipt of each event",
			"For each event broadcast to every connection, the delay from its publish (an XADD; for Centrifugo, its HTTP API's publish) until the last client had it: the fraction of events delivered to everyone within a given time.",
			"fraction of events", func(r *Result) *Histogram {
				return phaseHist(r.Broadcast, func(l *Latency) *Histogram { return l.LastHist })
			}},
		{"Broadcast: every receipt",
			"The delay from publish of every receipt at every client.",
			"fraction of receipts", func(r *Result) *Histogram {
				return phaseHist(r.Broadcast, func(l *Latency) *Histogram { return l.AllHist })
			}},
		{"Unicast: every receipt",
			"The delay from XADD of each event sent to one connection's own topic (Centrifugo has no unicast phase).",
			"fraction of receipts", func(r *Result) *Histogram { return phaseHist(r.Unicast, func(u *Unicast) *Histogram { return u.Hist }) }},
	} {
		var series []cdfSeries
		for i, res := range r.Results {
			if h := c.hist(res); h != nil && h.N > 0 {
				series = append(series, cdfSeries{Server: res.Server, Color: serverColor(i), Hist: h})
			}
		}
		if len(series) > 0 {
			out = append(out, reportPlot{Title: c.title, About: c.about, SVG: cdfPlot(c.title, c.yTitle, series)})
		}
	}
	return out
}

// phaseHist returns a phase's histogram, nil where the phase did not run.
func phaseHist[T any](p *T, h func(*T) *Histogram) *Histogram {
	if p == nil {
		return nil
	}
	return h(p)
}

// redact hides what an argument may carry that a shared report must not:
// a URL's password and its token query parameter, and a secret flag's
// value given as --flag=value.
func redact(arg string) string {
	name, value, flag := strings.Cut(arg, "=")
	if !flag {
		value, name = arg, ""
	}
	if flag && secretFlag(name) {
		return name + "=xxxxx"
	}
	u, err := url.Parse(value)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return arg
	}
	q := u.Query()
	if q.Has("token") {
		q.Set("token", "xxxxx")
		u.RawQuery = q.Encode()
	}
	r := u.Redacted()
	if r == value {
		return arg
	}
	if flag {
		return name + "=" + r
	}
	return r
}

// secretFlag reports whether arg names a flag whose value is a secret.
func secretFlag(arg string) bool {
	return strings.TrimLeft(arg, "-") == "centrifugo-api-key" && strings.HasPrefix(arg, "-")
}

// shellJoin quotes args for a POSIX shell where they need it, with their
// secrets redacted.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if i > 0 && secretFlag(args[i-1]) {
			a = "xxxxx"
		}
		a = redact(a)
		out[i] = a
		if a == "" || strings.ContainsFunc(a, func(c rune) bool {
			return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:=,@%+", c))
		}) {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
