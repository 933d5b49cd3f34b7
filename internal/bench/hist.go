package bench

import (
	"math/bits"
	"slices"
	"time"
)

// Histogram records durations in microseconds with about 0.1% precision
// (HDR style: exact below 2,048 µs, then 1,024 sub-buckets per power of
// two), so percentiles and the maximum are exact enough without keeping
// samples. The zero value is ready to use.
type Histogram struct {
	Counts map[int]uint64 `json:"counts"` // bucket index -> count
	N      uint64         `json:"n"`
	MaxUS  uint64         `json:"max_us"`
}

const linear = 2048

func bucket(us uint64) int {
	if us < linear {
		return int(us)
	}
	k := bits.Len64(us) - 11 // us >> k is in [1024, 2048)
	return linear + (k-1)*1024 + int(us>>k) - 1024
}

// lower returns the smallest value of bucket i.
func lower(i int) uint64 {
	if i < linear {
		return uint64(i)
	}
	k := (i-linear)/1024 + 1
	return uint64((i-linear)%1024+1024) << k
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	if h.Counts == nil {
		h.Counts = make(map[int]uint64)
	}
	h.Counts[bucket(us)]++
	h.N++
	h.MaxUS = max(h.MaxUS, us)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o Histogram) {
	if h.Counts == nil {
		h.Counts = make(map[int]uint64)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.MaxUS = max(h.MaxUS, o.MaxUS)
}

// Quantile returns the value below which a fraction q of the samples lie.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.N == 0 {
		return 0
	}
	if q >= 1 {
		return time.Duration(h.MaxUS) * time.Microsecond
	}
	want := uint64(q*float64(h.N)) + 1
	var seen uint64
	for _, i := range h.buckets() {
		if seen += h.Counts[i]; seen >= want {
			return time.Duration(min(lower(i), h.MaxUS)) * time.Microsecond
		}
	}
	return time.Duration(h.MaxUS) * time.Microsecond
}

// CDFPoint is one step of a cumulative distribution: a fraction F of the
// samples are below X or in X's bucket.
type CDFPoint struct {
	X time.Duration
	F float64
}

// CDF returns h's cumulative distribution, one point per non-empty bucket
// at the bucket's lowest value (as Quantile reports it), X increasing, but
// the last at the maximum with F 1. It is empty when h is.
func (h *Histogram) CDF() []CDFPoint {
	if h.N == 0 {
		return nil
	}
	var out []CDFPoint
	var seen uint64
	for _, i := range h.buckets() {
		seen += h.Counts[i]
		x := time.Duration(min(lower(i), h.MaxUS)) * time.Microsecond
		out = append(out, CDFPoint{X: x, F: float64(seen) / float64(h.N)})
	}
	out[len(out)-1].X = time.Duration(h.MaxUS) * time.Microsecond
	return out
}

// buckets returns the indexes of h's non-empty buckets in increasing order.
func (h *Histogram) buckets() []int {
	idx := make([]int, 0, len(h.Counts))
	for i, c := range h.Counts {
		if c > 0 {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	return idx
}
