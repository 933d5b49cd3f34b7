//go:build linux

package ws

import (
	"net"
	"syscall"

	"github.com/mailru/easygo/netpoll"
)

// poller is easygo's epoll on the raw socket fd. netpoll.Handle* would dup()
// the fd (two per connection, and CLOSE-WAIT sockets when only the net.Conn
// is closed); Epoll takes the fd as it is.
type poller struct {
	ep *netpoll.Epoll
}

// Read events are one-shot: a connection is re-armed after its input was
// drained, so exactly one worker reads it at a time and a burst is never
// stalled as edge-triggered single reads would be.
const readEvents = netpoll.EPOLLIN | netpoll.EPOLLRDHUP | netpoll.EPOLLONESHOT

// epollClosed is the event easygo delivers to every callback on Close.
const epollClosed = 0x20

func newPoller(onError func(error)) (*poller, error) {
	ep, err := netpoll.EpollCreate(&netpoll.EpollConfig{OnWaitError: onError})
	if err != nil {
		return nil, err
	}
	return &poller{ep: ep}, nil
}

// add registers fd; ready runs on the epoll goroutine for each event.
func (p *poller) add(fd int, ready func()) error {
	return p.ep.Add(fd, readEvents, func(ev netpoll.EpollEvent) {
		if ev&epollClosed == 0 {
			ready()
		}
	})
}

func (p *poller) rearm(fd int) error { return p.ep.Mod(fd, readEvents) }
func (p *poller) del(fd int) error   { return p.ep.Del(fd) }
func (p *poller) close() error       { return p.ep.Close() }

// writeNonblock writes to a non-blocking socket (Go sets O_NONBLOCK on the
// sockets it manages) and returns errWouldBlock instead of waiting.
func writeNonblock(fd int, b []byte) (int, error) {
	if fd < 0 {
		return 0, errWouldBlock
	}
	for {
		n, err := syscall.Write(fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, errWouldBlock
		case err != nil:
			return 0, err
		}
		return n, nil
	}
}

// socketFD returns the fd of conn without duplicating it.
func socketFD(conn net.Conn) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return -1, ErrUnsupported
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}
