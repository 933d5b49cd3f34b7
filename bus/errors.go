package bus

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrLeaseLost means a partition's lease is no longer this node's: its
// fenced writes were refused and its pipeline stops.
var ErrLeaseLost = errors.New("bus: partition lease lost")

// errKind is what an error from Redis means to the bus: whether the
// partition's lease is lost, its data must be checked, a script loaded,
// or the step only retried. classify tells; nothing else in the package
// reads an error's text.
type errKind int

const (
	kindNone        errKind = iota // no error
	kindCanceled                   // the context ended: context.Canceled or DeadlineExceeded
	kindLeaseLost                  // a fenced script found the lease not ours (WSBUSLEASE), or ErrLeaseLost
	kindTakeRefused                // applyScript found the consumer group elsewhere than the batch was read from (WSBUSTAKE)
	kindNoGroup                    // the stream or its consumer group is missing (NOGROUP)
	kindNoScript                   // EVALSHA of a script Redis has not cached (NOSCRIPT): a restarted Redis, or a pipeline
	kindBusyGroup                  // XGROUP CREATE of a group that exists (BUSYGROUP): another node or an earlier try made it
	kindNoKey                      // XINFO STREAM (and the like) of a key that does not exist: "ERR no such key"
	kindNil                        // redis.Nil: no value, a missing key or a blocking read that timed out
	kindTransient                  // Redis moving, starting or unreachable: MOVED, ASK, CLUSTERDOWN, TRYAGAIN, LOADING, READONLY, MASTERDOWN, a connection error
	kindOther                      // anything else
)

// classify tells what err means. A Redis error is known by its code, the
// first word of its message (Redis puts it first, scripts' error_reply
// too; an "ERR " in front of it, as KVRocks adds, is skipped); errors
// wrapped with %w are classified by what they wrap.
func classify(err error) errKind {
	switch {
	case err == nil:
		return kindNone
	case errors.Is(err, ErrLeaseLost):
		return kindLeaseLost
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return kindCanceled
	case errors.Is(err, redis.Nil): // a redis.Error too: before the codes
		return kindNil
	}
	if rerr := redis.Error(nil); errors.As(err, &rerr) {
		if rerr.Error() == "ERR no such key" {
			return kindNoKey
		}
		code, _, _ := strings.Cut(strings.TrimPrefix(rerr.Error(), "ERR "), " ")
		switch code {
		case "WSBUSLEASE":
			return kindLeaseLost
		case "WSBUSTAKE":
			return kindTakeRefused
		case "NOGROUP":
			return kindNoGroup
		case "NOSCRIPT":
			return kindNoScript
		case "BUSYGROUP":
			return kindBusyGroup
		case "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN":
			return kindTransient
		}
		return kindOther
	}
	var nerr net.Error // a dial refused, a connection reset, a timeout
	if errors.As(err, &nerr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, redis.ErrPoolTimeout) {
		return kindTransient
	}
	return kindOther
}

// RedisFailed tells whether err, the outcome of a Redis command, is a
// failure of Redis or of the connection to it (a timeout, a refused
// connection, a server loading, read-only or out of memory, a cluster
// moving, a script refusing a key of the wrong type) rather than one of
// the answers the bus expects and handles: nil, a lost lease, a group
// elsewhere or missing or existing, NOSCRIPT, a context ended. It is what
// wsbus_redis_errors_total counts.
func RedisFailed(err error) bool {
	switch classify(err) {
	case kindTransient, kindOther:
		return true
	case kindCanceled:
		// A command's own deadline passed: Redis did not answer in time.
		// A context cancelled (a shutdown, a lease given up) is no failure.
		return errors.Is(err, context.DeadlineExceeded)
	}
	return false
}
