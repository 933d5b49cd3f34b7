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
