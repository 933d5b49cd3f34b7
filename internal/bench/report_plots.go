package bench

import (
	"fmt"
	"html/template"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cdfSeries is one server's line on a CDF plot.
type cdfSeries struct {
	Server string
	Color  string
	Hist   *Histogram
}

// cdfPlot draws the cumulative distributions of delays, one line per
// server, with a legend giving each one's p50 and p99. The x axis is in
// milliseconds, on a log scale when the delays span more than a factor of
// ten, else linear from 0.
func cdfPlot(label, yTitle string, series []cdfSeries) template.HTML {
	lo, hi := math.Inf(1), 0.0
	for _, sr := range series {
		for _, p := range sr.Hist.CDF() {
			if v := msOf(p.X); v > 0 {
				lo, hi = min(lo, v), max(hi, v)
			}
		}
	}
	if hi == 0 {
		lo, hi = 1, 1
	}
	x := linearAxis(hi)
	xTitle := "delay from publish to receipt"
	if hi/lo > 10 {
		x, xTitle = logAxis(lo, hi), xTitle+" (log scale)"
	}
	x.from, x.to = padLeft, plotW-padRight
	y := axis{lo: 0, hi: 1, from: plotH - padBottom, to: padTop}
	s := newSVG(plotW, plotH, label)
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
		p := y.px(f)
		s.line(x.from, p, x.to, p, gridColor, "")
		s.text(x.from-6, p+4, "end", "tick", strconv.FormatFloat(f, 'g', -1, 64))
	}
	p99 := y.px(0.99)
	s.line(x.from, p99, x.to, p99, "#888", ` stroke-dasharray="4 3"`)
	s.text(x.from+6, p99+13, "start", "tick", "p99") // at the left, where no line is near 1
	s.xTicks(x, y.from, y.to, msLabel, xTitle)
	s.line(x.from, y.from, x.from, y.to, inkColor, "")
	s.f(`<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle" class="axis">%s</text>`, (y.from+y.to)/2, esc(yTitle))
	for i, sr := range slices.Backward(series) { // the gateway's line last, on top
		p50, p99 := ms(sr.Hist.Quantile(0.5)), ms(sr.Hist.Quantile(0.99)) // as the table gives them
		s.f(`<path class="cdf" d="%s" fill="none" stroke="%s" stroke-width="2" stroke-linejoin="round"><title>%s: p50 %s, p99 %s</title></path>`,
			stepPath(cdfSteps(sr.Hist.CDF(), x, y)), sr.Color, esc(sr.Server), p50, p99)
		ly := float64(padTop + 12 + 44*i)
		s.line(legendX, ly, legendX+24, ly, sr.Color, ` stroke-width="3"`)
		s.text(legendX+32, ly+4, "start", "legend", sr.Server)
		s.text(legendX+32, ly+20, "start", "tick", "p50 "+p50+", p99 "+p99)
	}
	return s.html()
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pt is a point in pixels.
type pt struct{ X, Y float64 }

// cdfSteps returns the vertices, in pixels, of a CDF's step line: from 0
// up to each point's F at its X, then across to the next point's X, and
// after the last across to the axis's end. Vertices are rounded to half a
// pixel; repeats are dropped and a run along one line keeps only its ends,
// so that thousands of buckets make a path of about one vertex per pixel.
func cdfSteps(cdf []CDFPoint, x, y axis) []pt {
	var out []pt
	add := func(p pt) {
		p = pt{math.Round(p.X*2) / 2, math.Round(p.Y*2) / 2}
		n := len(out)
		switch {
		case n > 0 && out[n-1] == p:
		case n > 1 && (out[n-2].X == p.X && out[n-1].X == p.X || out[n-2].Y == p.Y && out[n-1].Y == p.Y):
			out[n-1] = p
		default:
			out = append(out, p)
		}
	}
	for i, c := range cdf {
		at := x.px(msOf(c.X))
		if i == 0 {
			add(pt{at, y.px(0)})
		}
		add(pt{at, y.px(c.F)})
		next := x.to
		if i+1 < len(cdf) {
			next = x.px(msOf(cdf[i+1].X))
		}
		add(pt{next, y.px(c.F)})
	}
	return out
}

// stepPath writes vertices as an SVG path, with H and V where a segment is
// level or upright.
func stepPath(v []pt) string {
	var b strings.Builder
	for i, p := range v {
		switch {
		case i == 0:
			fmt.Fprintf(&b, "M%g %g", p.X, p.Y)
		case p.X == v[i-1].X:
			fmt.Fprintf(&b, "V%g", p.Y)
		case p.Y == v[i-1].Y:
			fmt.Fprintf(&b, "H%g", p.X)
		default:
			fmt.Fprintf(&b, "L%g %g", p.X, p.Y)
		}
	}
	return b.String()
}

// memoryBars draws each server's idle RSS and Go heap per connection as
// two horizontal bars on a linear axis from 0, each labelled with its
// value (inside the bar when it is long, after it otherwise).
func memoryBars(label string, results []*Result) template.HTML {
	const barH, groupGap, left = 18, 22, 100
	hi := 0.0
	for _, r := range results {
		hi = max(hi, r.PerConn.RSSBytes, r.PerConn.HeapBytes)
	}
	x := linearAxis(max(hi, 10)) // whole bytes on the ticks
	x.from, x.to = left, plotW-24
	h := padTop + len(results)*(2*barH+4+groupGap) + padBottom
	s := newSVG(plotW, h, label)
	top, bottom := float64(padTop), float64(h-padBottom)
	s.xTicks(x, bottom, top, bytesLabel, "bytes per idle connection, from the server's own /metrics")
	for i, r := range results {
		gy := top + groupGap/2 + float64(i*(2*barH+4+groupGap))
		s.text(left-10, gy+barH+6, "end", "legend", r.Server)
		for k, b := range []struct {
			name, opacity, inbar string
			v                    float64
		}{{"RSS", "1", "inbar", r.PerConn.RSSBytes}, {"Go heap", "0.45", "inbar-light", r.PerConn.HeapBytes}} {
			by := gy + float64(k*(barH+4))
			w := x.px(b.v) - x.from
			s.f(`<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s" fill-opacity="%s"><title>%s: %s %s per connection</title></rect>`,
				x.from, by, w, barH, serverColor(i), b.opacity, esc(r.Server), b.name, bytesLabel(b.v))
			text := b.name + " " + bytesLabel(b.v)
			if w > (x.to-x.from)/2 {
				s.text(x.from+w-6, by+barH-5, "end", b.inbar, text)
			} else {
				s.text(x.from+w+6, by+barH-5, "start", "tick", text)
			}
		}
	}
	s.line(x.from, top, x.from, bottom, inkColor, "")
	return s.html()
}
