package bus

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// pipelineOwner runs an owner of a one-partition bus and returns its
// Redis and a subscription to the live channels of topics.
func pipelineOwner(b *testing.B, topics ...string) (*redis.Client, streams.Keys, <-chan *redis.Message) {
	ctx := context.Background()
	rdb, keys := testBus(b, 1)
	o := testOwner(b, rdb, keys, 1, "n", 0)
	rctx, stop := context.WithCancel(ctx)
	b.Cleanup(stop)
	go func() { _ = o.Run(rctx) }()
	channels := make([]string, len(topics))
	for i, t := range topics {
		channels[i] = keys.Live(0, t)
	}
	sub := rdb.SSubscribe(ctx, channels...)
	b.Cleanup(func() { _ = sub.Close() })
	for range channels {
		if _, err := sub.Receive(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return rdb, keys, sub.Channel(redis.WithChannelSize(1 << 16))
}

// received waits for n messages on live.
func received(b *testing.B, live <-chan *redis.Message, n int) {
	for range n {
		select {
		case <-live:
		case <-time.After(10 * time.Second):
			b.Fatal("no event on the live channel within 10 s")
		}
	}
}

// BenchmarkPipelineWake times one event through an idle partition's
// pipeline: XADD to its ingress until the owner's publish arrives on the
// topic's live channel. Each event finds the pipeline waiting, the case
// where the owner's wait-then-read costs a round trip more than a blocking
// XREADGROUP would.
func BenchmarkPipelineWake(b *testing.B) {
	ctx := context.Background()
	topic := "wake"
	rdb, keys, live := pipelineOwner(b, topic)
	add := func() {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", topic, "data", "1"}}).Err(); err != nil {
			b.Fatal(err)
		}
		received(b, live, 1)
	}
	add() // the partition is owned and its pipeline waiting
	for b.Loop() {
		add()
	}
}

// BenchmarkPipelineBusy times events through a busy partition: they are
// added 1,000 to a Redis pipeline, faster than one owner moves them, so
// the owner reads full batches back to back. ns/op is per event.
func BenchmarkPipelineBusy(b *testing.B) {
	benchmarkBusy(b, []string{"busy"}, nil)
}

// BenchmarkPipelineBusyDeadlines is BenchmarkPipelineBusy with a deadline
// on every event (an hour: none falls due during the run), which the
// apply script also adds to the partition's deadlines set.
func BenchmarkPipelineBusyDeadlines(b *testing.B) {
	benchmarkBusy(b, []string{"busy"}, []any{"deadline", "3600000"})
}

// BenchmarkPipelineBusyTopics is BenchmarkPipelineBusy with events spread
// round-robin over 100 topics, as per-user notifications are: each batch
// touches each topic's history (and its seq) once per event or so, the
// costliest shape for the owner's per-topic work.
func BenchmarkPipelineBusyTopics(b *testing.B) {
	topics := make([]string, 100)
	for i := range topics {
		topics[i] = "user:" + strconv.Itoa(i)
	}
	benchmarkBusy(b, topics, nil)
}

// benchmarkBusy adds events round-robin over topics, with extra fields in
// each entry, 1,000 to a pipeline, and waits for all of them live.
func benchmarkBusy(b *testing.B, topics []string, extra []any) {
	ctx := context.Background()
	rdb, keys, live := pipelineOwner(b, topics...)
	// One event first: the owner holds its lease and reads.
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", topics[0], "data", "1"}}).Err(); err != nil {
		b.Fatal(err)
	}
	received(b, live, 1)
	b.ResetTimer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		received(b, live, b.N)
	}()
	for i := 0; i < b.N; i += 1000 {
		pipe := rdb.Pipeline()
		for j := range min(1000, b.N-i) {
			values := append([]any{"topic", topics[(i+j)%len(topics)], "data", `{"n":1}`}, extra...)
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: values})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	reportScriptTime(b, rdb)
}

// reportScriptTime reports the time Redis spent in scripts per event
// (INFO commandstats: the owner's apply script and the little else it
// runs), a figure the load of a shared machine moves far less than ns/op.
func reportScriptTime(b *testing.B, rdb *redis.Client) {
	b.StopTimer()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var usec float64
	for _, line := range strings.Split(info, "\r\n") {
		name, stats, ok := strings.Cut(line, ":")
		if !ok || name != "cmdstat_evalsha" && name != "cmdstat_eval" {
			continue
		}
		for _, kv := range strings.Split(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "usec="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				usec += n
			}
		}
	}
	b.ReportMetric(usec*1000/float64(b.N), "redis-script-ns/event")
}
