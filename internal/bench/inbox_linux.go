//go:build linux

package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// inbox reads a worker's connections from one epoll set on one goroutine,
// as a gateway would: a reading goroutine per connection made the clients'
// wake-ups, not the server, the larger part of every broadcast figure on a
// machine where both share the cores.
type inbox struct {
	w    *worker
	epfd int

	mu   sync.Mutex
	byFD []*wconn // registered connections by fd
}

func newInbox(w *worker) (*inbox, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	in := &inbox{w: w, epfd: epfd}
	go in.run()
	return in, nil
}

// adopt takes conn's socket from Go's poller into the inbox: wc keeps a
// duplicate of the fd and conn is closed. early is what was read past the
// "subscribed" message; it is handled before anything the socket holds.
func (in *inbox) adopt(wc *wconn, conn net.Conn, early []byte, resumed bool) error {
	fd, err := dupFD(conn)
	_ = conn.Close()
	if err != nil {
		return err
	}
	wc.mu.Lock()
	defer wc.mu.Unlock()
	wc.fd, wc.rest, wc.resumed = fd, wc.rest[:0], resumed
	err = in.consume(wc, early, time.Now().UnixNano())
	if err == nil && wc.soak != nil && wc.soak.broken {
		wc.soak.broken = false
		err = errors.New("bench: the server refused the subscription")
	}
	if err != nil {
		in.drop(wc, fd, false)
		return err
	}
	in.mu.Lock()
	if fd >= len(in.byFD) {
		in.byFD = append(in.byFD, make([]*wconn, fd+1-len(in.byFD))...)
	}
	in.byFD[fd] = wc
	in.mu.Unlock()
	// Events wait for wc.mu, which is held until wc is ready for them.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(in.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		in.drop(wc, fd, false)
		return err
	}
	return nil
}

// dupFD duplicates conn's socket, which stays non-blocking.
func dupFD(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, errors.New("bench: not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, errno := -1, syscall.Errno(0)
	if cerr := raw.Control(func(f uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, f, syscall.F_DUPFD_CLOEXEC, 0)
		fd, errno = int(r), e
	}); cerr != nil {
		return -1, cerr
	}
	if errno != 0 {
		return -1, errno
	}
	return fd, nil
}

// drop closes wc's socket, with a TCP reset when reset is set: tens of
// thousands of sockets in TIME_WAIT would block the next connections. It
// runs with wc.mu held.
func (in *inbox) drop(wc *wconn, fd int, reset bool) {
	in.mu.Lock()
	if fd < len(in.byFD) && in.byFD[fd] == wc {
		in.byFD[fd] = nil
	}
	in.mu.Unlock()
	if reset {
		_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
	}
	_ = syscall.Close(fd) // the last reference: it leaves the epoll set too
	if wc.fd == fd {
		wc.fd = -1
	}
}

// run reads whatever connection is ready, one read each per wake-up.
func (in *inbox) run() {
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.EpollWait(in.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			in.mu.Lock()
			var wc *wconn
			if fd < len(in.byFD) {
				wc = in.byFD[fd]
			}
			in.mu.Unlock()
			if wc != nil {
				in.readFrom(wc, fd, buf)
			}
		}
	}
}

func (in *inbox) readFrom(wc *wconn, fd int, buf []byte) {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	if wc.fd != fd {
		return // closed since the event
	}
	n, err := syscall.Read(fd, buf)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return
	case err != nil || n == 0:
		if err == nil {
			err = io.EOF
		}
		in.drop(wc, fd, false)
		in.w.closed(wc, err)
		return
	}
	if err := in.consume(wc, buf[:n], time.Now().UnixNano()); err != nil || wc.soak != nil && wc.soak.broken {
		in.drop(wc, fd, err == nil)
		in.w.closed(wc, err)
	}
}

// send writes b, a few client frames, to wc's socket; an error with
// nothing written is syscall.EAGAIN. It runs with wc.mu held.
func (in *inbox) send(wc *wconn, b []byte) error {
	n, err := syscall.Write(wc.fd, b)
	switch {
	case err != nil:
		return err
	case n < len(b):
		return io.ErrShortWrite // part of a frame went out: the stream is spoilt
	}
	return nil
}

// consume handles every whole frame of wc's unfinished input followed by
// data, and keeps what is left of a frame for the next read. It runs with
// wc.mu held.
func (in *inbox) consume(wc *wconn, data []byte, now int64) error {
	if len(wc.rest) > 0 {
		wc.rest = append(wc.rest, data...)
		data = wc.rest
	}
	rd := &wc.hdr
	for len(data) > 0 {
		rd.Reset(data)
		h, err := ws.ReadHeader(rd)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break // the header is not all here yet
		}
		if err != nil {
			return err
		}
		start := len(data) - rd.Len()
		if h.Length > 64<<20 {
			return errors.New("bench: a frame over 64 MiB")
		}
		end := start + int(h.Length)
		if end > len(data) {
			break
		}
		p := data[start:end]
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpPing:
			var pong bytes.Buffer
			_ = ws.WriteFrame(&pong, ws.MaskFrame(ws.NewPongFrame(p)))
			_, _ = syscall.Write(wc.fd, pong.Bytes()) // a few bytes: the socket has room
		case ws.OpClose:
			return closeError(p)
		case ws.OpText:
			in.w.record(wc, p, now)
		}
		data = data[end:]
	}
	// What is left moves to the front of rest, which may be data itself.
	wc.rest = append(wc.rest[:0], data...)
	return nil
}

// closeError tells what a close frame's payload p says.
func closeError(p []byte) error {
	code, reason := ws.ParseCloseFrameData(p)
	return fmt.Errorf("closed by the server: %d %q", code, reason)
}
