//go:build linux

package ws

import (
	"net"
	"syscall"
	"unsafe"

	"github.com/mailru/easygo/netpoll"
)

// poller is easygo's epoll on raw socket fds. netpoll.Handle* would dup()
// the fd of a net.Conn; upgraded connections keep no net.Conn at all, only
// their fd, so Epoll takes the fd as it is.
type poller struct {
	ep *netpoll.Epoll
}

// Interest in input and in room to write. Registrations are one-shot: a
// connection is re-armed with what it still wants after each event, so one
// worker reads it at a time and a writer waits for room without a thread.
const (
	pollIn  = uint32(netpoll.EPOLLIN | netpoll.EPOLLRDHUP)
	pollOut = uint32(netpoll.EPOLLOUT)
	pollErr = uint32(netpoll.EPOLLHUP | netpoll.EPOLLERR)
)

// epollClosed is the event easygo delivers to every callback on Close.
const epollClosed = 0x20

func newPoller(onError func(error)) (*poller, error) {
	ep, err := netpoll.EpollCreate(&netpoll.EpollConfig{OnWaitError: onError})
	if err != nil {
		return nil, err
	}
	return &poller{ep: ep}, nil
}

// add registers c's fd for events; c.event runs on the epoll goroutine
// for each event.
func (p *poller) add(fd int, events uint32, c *Conn) error {
	return p.ep.Add(fd, netpoll.EpollEvent(events|netpoll.EPOLLONESHOT), func(ev netpoll.EpollEvent) {
		if ev&epollClosed == 0 {
			c.event(uint32(ev))
		}
	})
}

func (p *poller) mod(fd int, events uint32) error {
	return p.ep.Mod(fd, netpoll.EpollEvent(events|netpoll.EPOLLONESHOT))
}

func (p *poller) del(fd int) error { return p.ep.Del(fd) }
func (p *poller) close() error     { return p.ep.Close() }

// readNonblock reads from a non-blocking socket; errWouldBlock means there
// is nothing to read now.
func readNonblock(fd int, b []byte) (int, error) { return nonblocking(syscall.Read, fd, b) }

// writeNonblock writes to a non-blocking socket and returns errWouldBlock
// instead of waiting.
func writeNonblock(fd int, b []byte) (int, error) { return nonblocking(syscall.Write, fd, b) }

// nonblocking runs a read or write, retried when a signal interrupts it;
// EAGAIN becomes errWouldBlock.
func nonblocking(op func(int, []byte) (int, error), fd int, b []byte) (int, error) {
	for {
		n, err := op(fd, b)
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

// maxIovecs bounds the frames of one writev; the rest wait for the next.
const maxIovecs = 64

// writevNonblock writes the frames with one writev and returns what the
// socket took; errWouldBlock when it took nothing.
func writevNonblock(fd int, frames [][]byte) (int, error) {
	var iov [maxIovecs]syscall.Iovec
	k := 0
	for _, f := range frames {
		if k == len(iov) {
			break
		}
		if len(f) == 0 {
			continue
		}
		iov[k].Base = &f[0]
		iov[k].SetLen(len(f))
		k++
	}
	if k == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.Syscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(k))
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN:
			return 0, errWouldBlock
		case e != 0:
			return 0, e
		}
		return int(n), nil
	}
}

func shutdownWrite(fd int) error { return syscall.Shutdown(fd, syscall.SHUT_WR) }
func closeFD(fd int) error       { return syscall.Close(fd) }

// detachFD takes the socket out of conn: it returns a duplicate of its fd
// (close-on-exec, and non-blocking like every socket Go made) and closes
// conn. The connection then costs only its kernel socket and its fd:
// net.Conn's netFD, addresses and the runtime's poll descriptor (about 900
// bytes of RSS) are gone.
func detachFD(conn net.Conn) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return -1, ErrUnsupported
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(f uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, f, syscall.F_DUPFD_CLOEXEC, 0)
		if fd = int(r); e != 0 {
			fd, dupErr = -1, e
		}
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, dupErr
	}
	_ = tc.Close() // the socket lives on in fd
	return fd, nil
}

// peerAddr returns the address of fd's peer.
func peerAddr(fd int) net.Addr {
	sa, err := syscall.Getpeername(fd)
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *syscall.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return nil
}
