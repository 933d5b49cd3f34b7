package bus

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/streams"
)

// testTopic returns a topic named name, as refTopic makes it, for tests
// that need no Gateway.
func testTopic(name string) *topic { return newTopic(streams.Keys{}, 0, name) }

// TestTopicMemory pins what a topic with one live channel costs the
// gateway once Redis confirmed it and a subscriber was told its epoch:
// the topic, its entries in Gateway.topics and go-redis's own set of
// channels, and its name and channel. A gateway of a million-connection
// fleet holds some 19,000 of these. Measured here: 493 B in 5 heap
// objects a topic when the topic was 184 bytes, liveConn kept a map entry
// per topic, and the caller's name, the channel, Redis's confirmation and
// the epoch reply were each kept in a string of their own; 270 B in 2
// objects (the topic, 112 bytes, and one string for its name and channel)
// with one epoch string per partition. The bounds leave room for the
// maps, which grow by whole tables.
func TestTopicMemory(t *testing.T) {
	const n = 4000
	srv := redistest.Start(t)
	g := liveGateway(t, srv.Client(t), redistest.Prefix(t))
	names := make([]string, n)
	for i := range names {
		names[i] = "bench:" + strconv.Itoa(100000+i) // like the bench's own topics
	}
	readyTopic(t, g, "warm") // the pub/sub connection and its goroutines

	before := heapNow()
	topics := make([]*topic, n)
	for i, name := range names {
		// The name is the client's: a fresh string, as decoding a
		// subscribe message makes it.
		topics[i] = g.refTopic(string([]byte(name)))
	}
	for _, tp := range topics {
		if !g.waitReady(tp) {
			t.Fatalf("live channel of %s not confirmed", tp.name())
		}
		// A fresh string, as each history reply's epoch is.
		g.noteEpoch(tp, string([]byte("1718000000000-abcdef")))
	}
	after := heapNow()
	runtime.KeepAlive(topics)
	runtime.KeepAlive(names) // counted in before: not to be freed by after

	perTopic := float64(after.bytes-before.bytes) / n
	objects := float64(after.objects-before.objects) / n
	t.Logf("a topic costs %.0f B in %.2f objects", perTopic, objects)
	if perTopic > 320 || objects > 2.5 {
		t.Errorf("a topic costs %.0f B in %.2f objects: want at most 320 B in 2.5", perTopic, objects)
	}
	if got := g.Stats().Topics; got != n+1 {
		t.Fatalf("%d topics, want %d", got, n+1)
	}
}

type heapUse struct{ bytes, objects int64 }

// heapNow returns the live heap after a full collection.
func heapNow() heapUse {
	runtime.GC()
	runtime.GC() // a second cycle frees what the first one's finalizers and sweeps let go
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return heapUse{int64(m.HeapAlloc), int64(m.HeapObjects)}
}
