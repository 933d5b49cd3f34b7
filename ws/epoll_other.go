//go:build !linux

package ws

import "net"

// poller exists only on Linux; elsewhere New fails with ErrUnsupported and
// the rest of the package (frames, queues) still builds and tests.
type poller struct{}

func newPoller(func(error)) (*poller, error) { return nil, ErrUnsupported }
func (p *poller) add(int, func()) error      { return ErrUnsupported }
func (p *poller) rearm(int) error            { return ErrUnsupported }
func (p *poller) del(int) error              { return ErrUnsupported }
func (p *poller) close() error               { return nil }
func socketFD(net.Conn) (int, error)         { return -1, ErrUnsupported }
func writeNonblock(int, []byte) (int, error) { return 0, errWouldBlock }
