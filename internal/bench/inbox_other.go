//go:build !linux

package bench

import (
	"errors"
	"net"
)

// inbox is the load client's epoll reader; it exists only on Linux, where
// the gateway runs.
type inbox struct{}

func newInbox(*worker) (*inbox, error) {
	return nil, errors.New("the load client needs Linux (epoll)")
}

func (*inbox) adopt(*wconn, net.Conn, []byte, bool) error { return errors.ErrUnsupported }
func (*inbox) drop(*wconn, int, bool)                     {}
func (*inbox) send(*wconn, []byte) error                  { return errors.ErrUnsupported }
