package bench

import (
	"testing"
	"time"
)

func TestBucketsAreOrderedAndTight(t *testing.T) {
	prev := -1
	for _, us := range []uint64{0, 1, 2047, 2048, 2049, 4095, 4096, 10_000, 123_456, 1 << 30} {
		i := bucket(us)
		if i < prev {
			t.Fatalf("bucket(%d) = %d goes backwards", us, i)
		}
		prev = i
		lo := lower(i)
		if lo > us || float64(us-lo) > float64(us)/1000+1 {
			t.Fatalf("value %d lands in bucket %d starting at %d: want within 0.1%%", us, i, lo)
		}
	}
}

func TestQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	var other Histogram
	other.Record(50 * time.Millisecond)
	h.Merge(other)
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {1, 50 * time.Millisecond}} {
		got := h.Quantile(tt.q)
		if diff := got - tt.want; diff < -tt.want/200 || diff > tt.want/200 {
			t.Errorf("p%v = %v, want %v within 0.5%%", tt.q*100, got, tt.want)
		}
	}
	if h.N != 10001 || h.MaxUS != 50000 {
		t.Fatalf("n %d max %d", h.N, h.MaxUS)
	}
}
