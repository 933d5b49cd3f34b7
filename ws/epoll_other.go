//go:build !linux

package ws

import "net"

// poller exists only on Linux; elsewhere New fails with ErrUnsupported and
// the rest of the package (frames, queues) still builds and tests.
type poller struct{}

const pollIn, pollOut, pollErr uint32 = 1, 4, 8

func newPoller(func(error)) (*poller, error)    { return nil, ErrUnsupported }
func (p *poller) add(int, uint32, *Conn) error  { return ErrUnsupported }
func (p *poller) mod(int, uint32) error         { return ErrUnsupported }
func (p *poller) del(int) error                 { return ErrUnsupported }
func (p *poller) close() error                  { return nil }
func readNonblock(int, []byte) (int, error)     { return 0, ErrUnsupported }
func writeNonblock(int, []byte) (int, error)    { return 0, ErrUnsupported }
func writevNonblock(int, [][]byte) (int, error) { return 0, ErrUnsupported }
func shutdownWrite(int) error                   { return ErrUnsupported }
func closeFD(int) error                         { return ErrUnsupported }
func detachFD(net.Conn) (int, error)            { return -1, ErrUnsupported }
func peerAddr(int) net.Addr                     { return nil }
