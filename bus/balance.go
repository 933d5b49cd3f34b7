package bus

import (
	"hash/fnv"
	"slices"
	"sort"
)

// assign decides which live node should own each of n partitions, given
// who owns them now. The result is balanced within one of even, and moves
// as few partitions as balance allows: a node keeps what it owns up to its
// share, the nodes that own the most get the shares rounded up, and only
// orphaned or excess partitions move, each to the node with spare room that
// ranks it highest by rendezvous hashing (so every node computes the same
// answer from the same view).
func assign(n int, nodes []string, owners map[int]string) []string {
	out := make([]string, n)
	if len(nodes) == 0 {
		return out
	}
	nodes = slices.Clone(nodes)
	sort.Strings(nodes)
	owned := make(map[string][]int, len(nodes))
	for p := 0; p < n; p++ {
		if o, ok := owners[p]; ok && slices.Contains(nodes, o) {
			owned[o] = append(owned[o], p)
		}
	}
	// The first n%len(nodes) nodes by current ownership get one more.
	byOwned := slices.Clone(nodes)
	sort.SliceStable(byOwned, func(i, j int) bool { return len(owned[byOwned[i]]) > len(owned[byOwned[j]]) })
	capacity := make(map[string]int, len(nodes))
	for i, node := range byOwned {
		capacity[node] = n / len(nodes)
		if i < n%len(nodes) {
			capacity[node]++
		}
	}
	for _, node := range nodes {
		ps := owned[node]
		sort.Slice(ps, func(i, j int) bool { return score(node, ps[i]) > score(node, ps[j]) })
		for _, p := range ps[:min(len(ps), capacity[node])] {
			out[p] = node
			capacity[node]--
		}
	}
	for p := 0; p < n; p++ {
		if out[p] != "" {
			continue
		}
		best := ""
		for _, node := range nodes {
			if capacity[node] > 0 && (best == "" || score(node, p) > score(best, p)) {
				best = node
			}
		}
		out[p] = best
		capacity[best]--
	}
	return out
}

// score ranks partition p for node: rendezvous (highest random weight)
// hashing.
func score(node string, p int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(node))
	_, _ = h.Write([]byte{byte(p), byte(p >> 8), byte(p >> 16), byte(p >> 24)})
	return h.Sum64()
}
