package bus

import (
	"context"
	"hash/maphash"
	"runtime"
)

// fanOuts fans live events out on several goroutines, so that a gateway
// on one Redis, whose one pub/sub connection is read by one goroutine,
// writes to its clients from every core. A topic below parallelFanOut
// subscribers is written by one goroutine; it is many such topics that
// need the cores, and each is kept on one shard, chosen by a hash of its
// channel, so its events are fanned out in the order Redis sent them.
//
// Each shard has a bounded queue. The reader blocks while its shard's is
// full: Redis then buffers on the connection, as it did when the reader
// fanned out itself and fell behind; an event is never dropped here.
//
// Only messages go through the queues. A subscription confirmation does
// not: the connection's owner takes it, as before, and a topic's events
// after it may be fanned out later than it is taken, which the resume
// argument allows (resume.go, "A lost pub/sub connection"). The end of a
// session is ordered by drain: the owner waits until every message the
// lost connection read is fanned out before it holds the topics to catch
// them up, as when the reader fanned them out itself.
type fanOuts struct {
	seed   maphash.Seed
	queues []chan shardItem
}

// shardItem is a live message to fan out, or (done set) a barrier that
// drain waits for.
type shardItem struct {
	channel, payload string
	done             chan<- struct{}
}

// shardQueue is the capacity of each shard's queue, in messages. Deep
// enough to carry a burst of small events over a shard's busy moment,
// shallow enough that a slow fan-out reaches Redis as backpressure within
// milliseconds. It bounds messages, not bytes: with events of a few
// hundred bytes a full queue is some hundred KiB, with events at the data
// limit (--max-data, 64 KiB by default) up to 64 MiB a shard, held here
// instead of in Redis's pub/sub output buffer.
const shardQueue = 1024

// startFanOuts starts one shard per core, each ending when ctx does;
// wg counts them.
func (g *Gateway) startFanOuts() *fanOuts {
	n := runtime.GOMAXPROCS(0)
	f := &fanOuts{seed: maphash.MakeSeed(), queues: make([]chan shardItem, n)}
	g.wg.Add(n)
	for i := range f.queues {
		q := make(chan shardItem, shardQueue)
		f.queues[i] = q
		go func() {
			defer g.wg.Done()
			g.fanOutShard(q)
		}()
	}
	return f
}

// fanOutShard fans out the messages of q in order until the Gateway
// closes.
func (g *Gateway) fanOutShard(q <-chan shardItem) {
	for {
		select {
		case <-g.ctx.Done():
			return
		case it := <-q:
			if it.done != nil {
				close(it.done)
				continue
			}
			g.fanOut(it.channel, it.payload)
		}
	}
}

// shard returns the index of the shard that fans out channel's events.
func (f *fanOuts) shard(channel string) int {
	return int(maphash.String(f.seed, channel) % uint64(len(f.queues)))
}

// push queues a message of channel to its shard, waiting while the queue
// is full; it reports false if ctx ended first.
func (f *fanOuts) push(ctx context.Context, channel, payload string) bool {
	select {
	case f.queues[f.shard(channel)] <- shardItem{channel: channel, payload: payload}:
		return true
	case <-ctx.Done():
		return false
	}
}

// drain returns once every shard has fanned out what was queued before
// it was called, or ctx ended (the Gateway closing: its shards stop).
func (f *fanOuts) drain(ctx context.Context) {
	dones := make([]chan struct{}, len(f.queues))
	for i, q := range f.queues {
		dones[i] = make(chan struct{})
		select {
		case q <- shardItem{done: dones[i]}:
		case <-ctx.Done():
			return
		}
	}
	for _, done := range dones {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}
