//go:build !linux

package bench

import (
	"context"
	"errors"
	"net"
)

// floor is the floor baseline's fan-out; it exists only on Linux (epoll),
// where the gateway runs.
type floor struct{}

func newFloor(context.Context) (*floor, error) {
	return nil, errors.New("bench: the floor baseline needs Linux (epoll)")
}

func (*floor) wait()                                     {}
func (*floor) add(string, int) error                     { return errors.ErrUnsupported }
func (*floor) broadcast(context.Context, string, []byte) {}
func dupFD(net.Conn) (int, error)                        { return -1, errors.ErrUnsupported }
