package bus

import (
	"fmt"
	"testing"
)

func counts(a []string) map[string]int {
	c := map[string]int{}
	for _, n := range a {
		c[n]++
	}
	return c
}

func owners(a []string) map[int]string {
	m := map[int]string{}
	for p, n := range a {
		if n != "" {
			m[p] = n
		}
	}
	return m
}

func moved(before, after []string) int {
	n := 0
	for p := range before {
		if before[p] != "" && before[p] != after[p] {
			n++
		}
	}
	return n
}

func TestAssignBalancesWithinOne(t *testing.T) {
	for _, tt := range []struct{ partitions, nodes int }{{64, 1}, {64, 3}, {64, 5}, {16, 3}, {7, 10}, {1024, 6}} {
		t.Run(fmt.Sprintf("%d over %d", tt.partitions, tt.nodes), func(t *testing.T) {
			var nodes []string
			for i := range tt.nodes {
				nodes = append(nodes, fmt.Sprintf("node-%d", i))
			}
			a := assign(tt.partitions, nodes, nil)
			lo, hi := tt.partitions, 0
			for _, node := range nodes {
				c := counts(a)[node]
				lo, hi = min(lo, c), max(hi, c)
			}
			if hi-lo > 1 || counts(a)[""] != 0 {
				t.Fatalf("shares from %d to %d (%v): want within one, all assigned", lo, hi, counts(a))
			}
			if again := assign(tt.partitions, []string{nodes[len(nodes)-1]}, nil); len(again) != tt.partitions {
				t.Fatal("wrong length")
			}
		})
	}
}

func TestAssignMovesOnlyWhatBalanceNeeds(t *testing.T) {
	const n = 64
	three := assign(n, []string{"a", "b", "c"}, nil)
	t.Run("join", func(t *testing.T) {
		four := assign(n, []string{"a", "b", "c", "d"}, owners(three))
		// d must get 16; nothing else should move.
		if got := counts(four)["d"]; got != 16 {
			t.Fatalf("new node got %d partitions, want 16", got)
		}
		if m := moved(three, four); m != 16 {
			t.Fatalf("a join moved %d partitions, want 16", m)
		}
	})
	t.Run("leave", func(t *testing.T) {
		two := assign(n, []string{"a", "c"}, owners(three))
		want := counts(three)["b"]
		if m := moved(three, two); m != want {
			t.Fatalf("a leave moved %d partitions, want the %d of the node that left", m, want)
		}
		if c := counts(two); c["a"] != 32 || c["c"] != 32 {
			t.Fatalf("shares %v, want 32 each", c)
		}
	})
	t.Run("stable", func(t *testing.T) {
		if m := moved(three, assign(n, []string{"c", "a", "b"}, owners(three))); m != 0 {
			t.Fatalf("the same fleet moved %d partitions", m)
		}
	})
	t.Run("from scratch is deterministic", func(t *testing.T) {
		if m := moved(three, assign(n, []string{"b", "c", "a"}, nil)); m != 0 {
			t.Fatalf("two nodes computing from the same view disagree on %d partitions", m)
		}
	})
}
