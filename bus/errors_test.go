package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/streams"
)

// TestClassify classifies errors as go-redis returns them from a real
// redis-server: the bus's scripts' refusals, Redis's own replies (from a
// replica, a cluster node without slots, or sent by a script where a
// single server cannot be made to send them: go-redis reads an error
// reply the same whatever sent it), connection failures and contexts
// that ended. Each is classified alike when wrapped.
func TestClassify(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	keys := streams.Keys{Prefix: redistest.Prefix(t)}
	owner, ingress := keys.Owner(0), keys.Ingress(0)
	if err := rdb.Set(ctx, owner, "n 1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: ingress, Values: []any{"topic", "t", "data", "x"}}).Val()
	if err := rdb.XGroupCreate(ctx, ingress, streams.Group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	noGroup := keys.Ingress(1)
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: noGroup, Values: []any{"topic", "t"}})

	// reply makes the server send msg as an error reply; the client does
	// not retry, as go-redis would a LOADING or TRYAGAIN.
	once := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = once.Close() })
	reply := func(msg string) error {
		return once.Eval(ctx, "return redis.error_reply(ARGV[1])", nil, msg).Err()
	}
	replica := redistest.Start(t, "--replicaof", "127.0.0.1", srv.Addr[strings.LastIndexByte(srv.Addr, ':')+1:]).Client(t)
	slotless := redistest.Start(t, "--cluster-enabled", "yes").Client(t)
	refused := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)), MaxRetries: -1})
	t.Cleanup(func() { _ = refused.Close() })
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()

	tests := []struct {
		name string
		err  error
		want errKind
	}{
		{"nil", nil, kindNone},
		{"ErrLeaseLost", ErrLeaseLost, kindLeaseLost},
		{"a fenced script, lease not ours", trimScript.Run(ctx, rdb, []string{owner, ingress}, "n 2", streams.Group, "0-0").Err(), kindLeaseLost},
		{"apply, the group not where the batch was read", applyScript.Run(ctx, rdb, []string{owner, ingress, keys.Dead(0), keys.Deadlines(0)},
			"n 1", streams.Group, 10, 1000, 1, "1-1", id, "n", "a", id).Err(), kindTakeRefused},
		{"XREADGROUP, no group", rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: streams.Group, Consumer: "n", Streams: []string{noGroup, "0"}}).Err(), kindNoGroup},
		{"a script's XPENDING, no group", trimScript.Run(ctx, rdb, []string{owner, noGroup}, "n 1", streams.Group, "0-0").Err(), kindNoGroup},
		{"EVALSHA, not cached", rdb.EvalSha(ctx, strings.Repeat("0", 40), nil).Err(), kindNoScript},
		{"NOSCRIPT as KVRocks sends it", reply("ERR NOSCRIPT No matching script"), kindNoScript},
		{"GET, no key", rdb.Get(ctx, keys.Prefix+":missing").Err(), kindNil},
		{"XREAD, nothing within BLOCK", rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{ingress, "$"}, Block: time.Millisecond}).Err(), kindNil},
		{"acquire, lease held", acquireScript.Run(ctx, rdb, []string{owner, keys.PartitionMeta(0)}, "m", 1000).Err(), kindNil},
		{"a write to a replica", replica.Set(ctx, "k", "v", 0).Err(), kindTransient},
		{"a cluster node without the slot", slotless.Get(ctx, "k").Err(), kindTransient},
		{"MOVED", reply("MOVED 3999 127.0.0.1:6381"), kindTransient},
		{"ASK", reply("ASK 3999 127.0.0.1:6381"), kindTransient},
		{"TRYAGAIN", reply("TRYAGAIN Multiple keys request during rehashing of slot"), kindTransient},
		{"LOADING", reply("LOADING Redis is loading the dataset in memory"), kindTransient},
		{"MASTERDOWN", reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), kindTransient},
		{"a connection refused", refused.Get(ctx, "k").Err(), kindTransient},
		{"a canceled context", rdb.Get(canceled, "k").Err(), kindCanceled},
		{"an expired context", rdb.Get(expired, "k").Err(), kindCanceled},
		{"WRONGTYPE", rdb.Get(ctx, ingress).Err(), kindOther},
		{"an unknown command", rdb.Do(ctx, "NOSUCHCOMMAND").Err(), kindOther},
		{"a script's own error", reply("WSBUSNOPE not a code of ours"), kindOther},
		{"not from Redis", errors.New("NOSCRIPT but not a reply"), kindOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err); got != tt.want {
				t.Errorf("classify(%v) = %d, want %d", tt.err, got, tt.want)
			}
			if tt.err == nil {
				return
			}
			wrapped := fmt.Errorf("doing it: %w", tt.err)
			if got := classify(wrapped); got != tt.want {
				t.Errorf("classify(%v) = %d, want %d", wrapped, got, tt.want)
			}
		})
	}
}

// TestClassifyConnectionLost classifies the error of a blocking read
// whose Redis shut down under it: transient, as a failover is.
func TestClassifyConnectionLost(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	errc := make(chan error, 1)
	go func() {
		errc <- rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{"s", "$"}, Block: 30 * time.Second}).Err()
	}()
	admin := srv.Client(t)
	testutil.Eventually(t, 5*time.Second, func() error {
		if list := admin.ClientList(ctx).Val(); !strings.Contains(list, "cmd=xread") {
			return fmt.Errorf("no client blocked in XREAD: %s", list)
		}
		return nil
	})
	srv.Shutdown(t)
	select {
	case err := <-errc:
		if got := classify(err); got != kindTransient {
			t.Errorf("classify(%v) = %d, want %d (transient)", err, got, kindTransient)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("XREAD did not return within 10 s of the shutdown")
	}
}
