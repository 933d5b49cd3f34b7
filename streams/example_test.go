package streams_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// redisAddr is the redis-server the Examples run against.
var redisAddr string

func TestMain(m *testing.M) {
	srv, stop, err := redistest.StartMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	redisAddr = srv.Addr
	code := m.Run()
	stop()
	os.Exit(code)
}

// A service publishes an event to a topic: an XADD to the ingress stream
// of the topic's partition, which the partition's owner turns into
// history and live delivery.
func Example() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	keys := streams.Keys{Prefix: "wsbus"}
	// `wsbus migrate` (or the first `wsbus serve`) creates the bus once.
	if _, err := migrations.Run(ctx, rdb, keys, 64); err != nil {
		fmt.Println(err)
		return
	}

	pub := streams.NewPublisher(rdb, keys, 0) // 0: the default size limit
	id, err := pub.Publish(ctx, "user:42", []byte(`{"text":"hi"}`))
	if err != nil {
		fmt.Println(err)
		return
	}

	// Without this package: the same XADD, the topic hashed by hand.
	p := streams.Partition("user:42", 64) // crc32(topic) % partitions
	entry := rdb.XRange(ctx, keys.Ingress(p), id, id).Val()[0]
	fmt.Println(keys.Ingress(p), entry.Values["topic"], entry.Values["data"])
	// Output: wsbus:{6}:in user:42 {"text":"hi"}
}
