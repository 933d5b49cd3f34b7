package bench

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
)

// The plots of the report are SVG written by hand: a few lines, axes with
// labelled ticks, and text, with nothing to load and no script.

// A plot's size and margins in pixels: the plot area is what is left, the
// legend sits to its right.
const (
	plotW, plotH        = 760, 380
	padLeft, padRight   = 64, 200 // y labels; the legend
	padTop, padBottom   = 12, 48  // x labels and the axis's title
	legendX             = plotW - padRight + 16
	gridColor, inkColor = "#ddd", "#333"
)

// serverColors are the servers' colors in the order of the results, the
// gateway first.
var serverColors = []string{"#1f6fb4", "#e6760e", "#2a9d3a", "#8e44ad", "#7f7f7f"}

func serverColor(i int) string { return serverColors[i%len(serverColors)] }

// axis maps values in [lo, hi] to pixels in [from, to], linearly or on a
// log scale.
type axis struct {
	lo, hi   float64
	log      bool
	from, to float64
}

// px returns v's pixel, values outside the axis clamped to its ends.
func (a axis) px(v float64) float64 {
	v = min(max(v, a.lo), a.hi)
	var t float64
	if a.log {
		t = math.Log(v/a.lo) / math.Log(a.hi/a.lo)
	} else {
		t = (v - a.lo) / (a.hi - a.lo)
	}
	return a.from + t*(a.to-a.from)
}

// linearAxis runs from 0 to hi rounded up to a tick; its ticks are 1, 2 or
// 5 times a power of ten apart, at most 8 of them after 0.
func linearAxis(hi float64) axis {
	if !(hi > 0) {
		hi = 1
	}
	step := niceStep(hi / 8)
	return axis{lo: 0, hi: roundNice(math.Ceil(hi/step-1e-9) * step)}
}

// niceStep returns the smallest of 1, 2 or 5 times a power of ten that is
// at least v.
func niceStep(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// logAxis runs from lo rounded down to hi rounded up, both to 1, 2 or 5
// times a power of ten, or to powers of ten when it spans more than three.
func logAxis(lo, hi float64) axis {
	lo = max(lo, 1e-9)
	hi = max(hi, lo)
	down := roundNice(niceStep(lo))
	if down > lo*(1+1e-9) {
		down = prevNice(down)
	}
	up := roundNice(niceStep(hi))
	if up <= down {
		up = nextNice(down)
	}
	if up/down > 1000 { // more than 10 ticks: the ticks are the powers of ten
		down, up = math.Pow(10, math.Floor(math.Log10(lo)+1e-9)), math.Pow(10, math.Ceil(math.Log10(hi)-1e-9))
	}
	return axis{lo: roundNice(down), hi: roundNice(up), log: true}
}

// nextNice and prevNice step along …, 0.5, 1, 2, 5, 10, 20, …
func nextNice(v float64) float64 {
	m, p := mantissa(v)
	switch {
	case m < 1.5:
		return roundNice(2 * p)
	case m < 3.5:
		return roundNice(5 * p)
	}
	return roundNice(10 * p)
}

func prevNice(v float64) float64 {
	m, p := mantissa(v)
	switch {
	case m < 1.5:
		return roundNice(p / 2)
	case m < 3.5:
		return roundNice(p)
	}
	return roundNice(2 * p)
}

// mantissa splits v into m times p, p a power of ten and m in [1, 10).
func mantissa(v float64) (m, p float64) {
	p = math.Pow(10, math.Floor(math.Log10(v)+1e-9))
	return v / p, p
}

// ticks returns the axis's tick values, increasing, both ends included: on
// a log axis 1, 2 and 5 times each power of ten, or the powers of ten
// alone when that would be more than 10 ticks.
func (a axis) ticks() []float64 {
	var out []float64
	if !a.log {
		step := niceStep(a.hi / 8)
		for i := 0; float64(i)*step <= a.hi*(1+1e-9); i++ {
			out = append(out, roundNice(float64(i)*step))
		}
		return out
	}
	for v := a.lo; v <= a.hi*(1+1e-9); v = nextNice(v) {
		out = append(out, v)
	}
	if len(out) <= 10 {
		return out
	}
	var decades []float64
	for _, v := range out {
		if m, _ := mantissa(v); m < 1.5 {
			decades = append(decades, v)
		}
	}
	return decades
}

// roundNice removes the float error that stepping by 2/5 and 5/2 gathers.
func roundNice(v float64) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 6, 64), 64)
	return f
}

// msLabel labels a duration given in milliseconds.
func msLabel(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'g', 4, 64) + " s"
	}
	return strconv.FormatFloat(v, 'g', 4, 64) + " ms"
}

// bytesLabel labels a size, its thousands grouped.
func bytesLabel(v float64) string {
	s := strconv.FormatFloat(math.Abs(math.Round(v)), 'f', 0, 64)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if v < -0.5 {
		s = "-" + s
	}
	return s + " B"
}

// svg builds one plot.
type svg struct{ b strings.Builder }

// newSVG begins a plot of w by h pixels; label names it for screen readers.
func newSVG(w, h int, label string) *svg {
	s := &svg{}
	s.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s" font-family="sans-serif" font-size="12">`,
		w, h, w, h, esc(label))
	return s
}

func (s *svg) f(format string, args ...any) { fmt.Fprintf(&s.b, format, args...) }

func (s *svg) text(x, y float64, anchor, class, body string) {
	s.f(`<text x="%.1f" y="%.1f" text-anchor="%s" class="%s">%s</text>`, x, y, anchor, class, esc(body))
}

// line draws a line; extra holds more attributes, each after a space.
func (s *svg) line(x1, y1, x2, y2 float64, color, extra string) {
	s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"%s/>`, x1, y1, x2, y2, color, extra)
}

// html ends the plot. Its markup is trusted: numbers, and text that went
// through esc.
func (s *svg) html() template.HTML {
	return template.HTML(s.b.String() + "</svg>")
}

func esc(s string) string { return template.HTMLEscapeString(s) }

// xTicks draws the x axis's grid lines and labels below the plot area.
func (s *svg) xTicks(x axis, bottom, top float64, label func(float64) string, title string) {
	for _, v := range x.ticks() {
		p := x.px(v)
		s.line(p, top, p, bottom, gridColor, "")
		s.text(p, bottom+16, "middle", "tick", label(v))
	}
	s.line(x.from, bottom, x.to, bottom, inkColor, "")
	s.text((x.from+x.to)/2, bottom+38, "middle", "axis", title)
}
