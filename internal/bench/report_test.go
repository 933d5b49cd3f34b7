package bench

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// spread returns a histogram of n delays from lo to hi, denser at the low
// end, as delays are.
func spread(n int, lo, hi time.Duration) *Histogram {
	var h Histogram
	for i := range n {
		f := float64(i) / float64(max(n-1, 1))
		h.Record(lo + time.Duration(f*f*float64(hi-lo)))
	}
	return &h
}

// fakeComparison is a run over three servers: the gateway, the naive
// baseline and the floor, the floor without a resume storm.
func fakeComparison() *Comparison {
	cmp := &Comparison{Ratios: map[string]map[string]float64{}}
	for i, s := range []struct {
		name      string
		rss, heap float64
		last      time.Duration
	}{{"wsbus", 687, 468, 110 * time.Millisecond}, {Naive, 35650, 29058, 170 * time.Millisecond}, {Floor, 311, 18, 120 * time.Millisecond}} {
		r := &Result{Server: s.name, Gateways: 1, Conns: 2000, Workers: 1, Mix: "shared"}
		r.PerConn.RSSBytes, r.PerConn.HeapBytes = s.rss, s.heap
		r.Broadcast = &Latency{Events: 50, Receipts: 100000,
			LastHist: spread(50, s.last, 2*s.last), AllHist: spread(100000, s.last/100, 2*s.last)}
		if s.name != Floor {
			r.Storm = &Storm{Clients: 2000, Missed: 10, Took: time.Second, Done: true}
		}
		cmp.Results = append(cmp.Results, r)
		if i > 0 {
			cmp.Ratios[s.name] = ratios(cmp.Results[0], r)
		}
	}
	return cmp
}

func TestCDFIsMonotone(t *testing.T) {
	h := spread(5000, 0, 3*time.Second)
	h.Record(0)
	cdf := h.CDF()
	if len(cdf) < 100 {
		t.Fatalf("%d points from 5,001 samples over 3 s", len(cdf))
	}
	for i, p := range cdf {
		if p.F <= 0 || p.F > 1 || i > 0 && (p.X <= cdf[i-1].X || p.F < cdf[i-1].F) {
			t.Fatalf("point %d %+v after %+v: want X rising, F rising within (0, 1]", i, p, cdf[max(i-1, 0)])
		}
	}
	if last := cdf[len(cdf)-1]; last.F != 1 || last.X != 3*time.Second {
		t.Fatalf("last point %+v, want F 1 at the maximum, 3s", last)
	}
	// The CDF agrees with Quantile: the first point at or above q is the
	// quantile.
	for _, q := range []float64{0.5, 0.99} {
		for _, p := range cdf {
			if p.F > q {
				if p.X != h.Quantile(q) {
					t.Errorf("p%v: the CDF passes %v at %v, Quantile says %v", q*100, q, p.X, h.Quantile(q))
				}
				break
			}
		}
	}
	if got := (&Histogram{}).CDF(); got != nil {
		t.Errorf("empty histogram's CDF = %v, want none", got)
	}
}

func TestCDFStepsAreMonotone(t *testing.T) {
	h := spread(20000, 200*time.Microsecond, 400*time.Millisecond)
	for name, x := range map[string]axis{"log": logAxis(0.2, 400), "linear": linearAxis(400)} {
		t.Run(name, func(t *testing.T) {
			x.from, x.to = padLeft, plotW-padRight
			y := axis{lo: 0, hi: 1, from: plotH - padBottom, to: padTop}
			v := cdfSteps(h.CDF(), x, y)
			if w, h := x.to-x.from, y.from-y.to; len(v) < 10 || float64(len(v)) > 4*(w+h) {
				t.Fatalf("%d vertices for a plot of %.0f by %.0f px: want at most two per half pixel", len(v), w, h)
			}
			for i, p := range v {
				if p.X < x.from || p.X > x.to || p.Y > y.from || p.Y < y.to {
					t.Fatalf("vertex %d %+v outside the plot area", i, p)
				}
				if i > 0 && (p.X < v[i-1].X || p.Y > v[i-1].Y) {
					t.Fatalf("vertex %d %+v after %+v: the line goes left or down", i, p, v[i-1])
				}
			}
			first, last := v[0], v[len(v)-1]
			if first.Y != y.from || last.Y != y.to || last.X != x.to {
				t.Fatalf("line from %+v to %+v, want from F 0 to F 1 at the right end", first, last)
			}
			if d := stepPath(v); !strings.HasPrefix(d, "M") || strings.ContainsAny(d, "e") {
				t.Fatalf("path %.80q…: want it to start with M and have no exponents", d)
			}
		})
	}
}

func TestAxisTicks(t *testing.T) {
	for _, tt := range []struct {
		name   string
		a      axis
		lo, hi float64 // the data the axis must cover
		label  func(float64) string
	}{
		{"linear ms", linearAxis(357.1), 0, 357.1, msLabel},
		{"linear below 1", linearAxis(0.3), 0, 0.3, msLabel},
		{"linear bytes", linearAxis(35832), 0, 35832, bytesLabel},
		{"linear nothing", linearAxis(0), 0, 0, msLabel},
		{"log ms", logAxis(0.8, 357.1), 0.8, 357.1, msLabel},
		{"log one decade", logAxis(95, 360), 95, 360, msLabel},
		{"log one value", logAxis(100, 100), 100, 100, msLabel},
		{"log many decades", logAxis(0.003, 31000), 0.003, 31000, msLabel},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ticks := tt.a.ticks()
			if len(ticks) < 2 || len(ticks) > 10 {
				t.Fatalf("ticks %v: want 2 to 10", ticks)
			}
			if ticks[0] != tt.a.lo || ticks[len(ticks)-1] != tt.a.hi || tt.a.lo > tt.lo || tt.a.hi < tt.hi {
				t.Fatalf("ticks %v on [%v, %v]: want the axis's ends, covering [%v, %v]", ticks, tt.a.lo, tt.a.hi, tt.lo, tt.hi)
			}
			if tt.a.log && (tt.a.lo < tt.lo/10 || tt.a.hi > tt.hi*10) || !tt.a.log && tt.hi > 0 && tt.a.hi > 2.5*tt.hi {
				t.Errorf("axis [%v, %v] much wider than the data [%v, %v]", tt.a.lo, tt.a.hi, tt.lo, tt.hi)
			}
			seen := map[string]bool{}
			for i, v := range ticks {
				if i > 0 && v <= ticks[i-1] {
					t.Fatalf("ticks %v not increasing", ticks)
				}
				nice := v
				if !tt.a.log {
					nice = ticks[1] - ticks[0] // the step, each tick a multiple of it
					if k := v / nice; !near(k, math.Round(k)) {
						t.Errorf("tick %v is not a multiple of the step %v", v, nice)
					}
				}
				if m, _ := mantissa(nice); !(near(m, 1) || near(m, 2) || near(m, 5)) {
					t.Errorf("tick %v: %v is not 1, 2 or 5 times a power of ten", v, nice)
				}
				l := tt.label(v)
				if seen[l] || strings.ContainsAny(l, "e") {
					t.Errorf("tick %v labelled %q: want labels distinct, without exponents", v, l)
				}
				seen[l] = true
			}
		})
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestAxisLabels(t *testing.T) {
	for v, want := range map[float64]string{0.5: "0.5 ms", 20: "20 ms", 1000: "1 s", 2500: "2.5 s"} {
		if got := msLabel(v); got != want {
			t.Errorf("msLabel(%v) = %q, want %q", v, got, want)
		}
	}
	for v, want := range map[float64]string{0: "0 B", 687.4: "687 B", 35650: "35,650 B", 1234567: "1,234,567 B", -42: "-42 B"} {
		if got := bytesLabel(v); got != want {
			t.Errorf("bytesLabel(%v) = %q, want %q", v, got, want)
		}
	}
}

// element is a parsed XML element: what the report tests look at.
type element struct {
	Name     string
	Attr     map[string]string
	Text     string
	Children []*element
}

// parseXML parses a document strictly as XML: the report's page is
// well-formed, so that its SVG can be taken out and used alone.
func parseXML(t *testing.T, doc []byte) *element {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(string(doc)))
	root := &element{}
	stack := []*element{root}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the page is not well-formed: %v", err)
		}
		top := stack[len(stack)-1]
		switch tok := tok.(type) {
		case xml.StartElement:
			e := &element{Name: tok.Name.Local, Attr: map[string]string{}}
			for _, a := range tok.Attr {
				e.Attr[a.Name.Local] = a.Value
			}
			top.Children = append(top.Children, e)
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			top.Text += string(tok)
		}
	}
	return root
}

// all returns the elements under e named name, in document order.
func (e *element) all(name string) []*element {
	var out []*element
	for _, c := range e.Children {
		if c.Name == name {
			out = append(out, c)
		}
		out = append(out, c.all(name)...)
	}
	return out
}

func (e *element) text() string {
	s := e.Text
	for _, c := range e.Children {
		s += c.text()
	}
	return s
}

func TestReportPage(t *testing.T) {
	cmp := fakeComparison()
	cmp.Results[0].Unicast = &Unicast{Rate: 500, Sent: 500, Received: 500, Hist: spread(500, time.Millisecond, 9*time.Millisecond)}
	r := NewRunReport(cmp, []string{"./bin/wsbus", "bench", "--conns", "2000", "--url", "ws://127.0.0.1:1/v1/ws?a=b&c"})
	page, err := r.HTML()
	if err != nil {
		t.Fatal(err)
	}
	doc := parseXML(t, page)
	if pre := doc.all("pre"); len(pre) != 1 || pre[0].text() != `./bin/wsbus bench --conns 2000 --url 'ws://127.0.0.1:1/v1/ws?a=b&c'` {
		t.Fatalf("command line %q", pre[0].text())
	}
	svgs := doc.all("svg")
	if len(svgs) != 4 {
		t.Fatalf("%d plots, want memory, the two broadcast CDFs and unicast", len(svgs))
	}
	if bars := svgs[0].all("rect"); len(bars) != 6 {
		t.Errorf("%d memory bars, want RSS and heap for each of 3 servers", len(bars))
	}
	for i, want := range [][]string{{Floor, Naive, "wsbus"}, {Floor, Naive, "wsbus"}, {"wsbus"}} { // the gateway's last, on top
		var got []string
		for _, p := range svgs[i+1].all("path") {
			if p.Attr["class"] == "cdf" {
				server, _, _ := strings.Cut(p.text(), ":")
				got = append(got, server)
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("plot %q: lines of %v, want one per server %v", svgs[i+1].Attr["aria-label"], got, want)
		}
	}
	var rows []string
	for _, tr := range doc.all("tr") {
		var cells []string
		for _, td := range tr.Children {
			cells = append(cells, td.text())
		}
		rows = append(rows, strings.Join(cells, "|"))
	}
	want := []string{"|wsbus|naive|floor|wsbus/naive|wsbus/floor", "RSS per connection|687 B|35650 B|311 B|0.02|2.21", "resume storm, all caught up|1000.0 ms|1000.0 ms|-|1.00|-"}
	for _, w := range want {
		if !strings.Contains(strings.Join(rows, "\n")+"\n", w+"\n") {
			t.Errorf("table rows\n%s\nlack\n%s", strings.Join(rows, "\n"), w)
		}
	}
}

func TestWriteReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "report")
	if err := WriteReport(dir, NewRunReport(fakeComparison(), []string{"wsbus", "bench"})); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "index.html")); err != nil || fi.Size() < 1000 {
		t.Fatalf("index.html: %v, %v", fi, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back RunReport
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Command != "wsbus bench" || len(back.Results) != 3 || back.Results[1].Broadcast.LastHist.N != 50 ||
		back.Results[1].Broadcast.AllHist.Quantile(0.99) != fakeComparison().Results[1].Broadcast.AllHist.Quantile(0.99) {
		t.Fatalf("result.json read back: command %q, %d results", back.Command, len(back.Results))
	}
}

// TestCommandRedacted: a report's command line keeps no password of a
// Redis URL, no token of a WebSocket URL and no Centrifugo API key, in
// either form of the flag.
func TestCommandRedacted(t *testing.T) {
	got := shellJoin([]string{"wsbus", "bench", "--redis", "redis://:s3cret@127.0.0.1:6379/0",
		"--url=ws://127.0.0.1:8080/v1/ws?topic=a&token=eyJhbGc", "--conns", "10",
		"--centrifugo-api-key", "k3y1", "-centrifugo-api-key=k3y2", "--baselines", "floor"})
	for _, secret := range []string{"s3cret", "eyJhbGc", "k3y1", "k3y2"} {
		if strings.Contains(got, secret) {
			t.Errorf("command line %q keeps the secret %q", got, secret)
		}
	}
	for _, keep := range []string{"127.0.0.1:6379/0", "topic=a", "--conns 10", "--centrifugo-api-key xxxxx", "-centrifugo-api-key=xxxxx", "--baselines floor"} {
		if !strings.Contains(got, keep) {
			t.Errorf("command line %q lost %q", got, keep)
		}
	}
}

// TestStormOutOfTimeIsNotCalledLost: a storm that ran out of time shows
// what was not received by then as such in the table, not as lost: those
// resumes may only have been unfinished.
func TestStormOutOfTimeIsNotCalledLost(t *testing.T) {
	cmp := fakeComparison()
	cmp.Results[0].Storm = &Storm{Clients: 2000, Missed: 1, Took: time.Minute, Lost: 137, Done: false}
	cell := ""
	for _, row := range cmp.Table().Rows {
		if row[0] == "resume storm not recovered/lost/dup" {
			cell = row[1]
		}
	}
	if cell != "0/137 not in by the limit/0" {
		t.Fatalf("the out-of-time storm's cell is %q, want \"0/137 not in by the limit/0\"", cell)
	}
}

// TestUnicastSaysWhatItLeftOut: the own topics of connections that failed
// to connect, not published to, are named beside unicast's losses.
func TestUnicastSaysWhatItLeftOut(t *testing.T) {
	cmp := fakeComparison()
	cmp.Results[0].Unicast = &Unicast{Sent: 100, Received: 100, LeftOut: 3}
	for _, row := range cmp.Table().Rows {
		if row[0] == "unicast lost" {
			if want := "0 of 100 (3 own topics of failed connections left out)"; row[1] != want {
				t.Fatalf("unicast lost: %q, want %q", row[1], want)
			}
			return
		}
	}
	t.Fatal("no unicast lost row")
}
