package bus

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// proxy is a TCP proxy in front of a Redis for tests of the live path:
// it can hold what Redis sends (replies and messages wait until Release,
// while commands still reach Redis) and cut every connection.
type proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	held    chan struct{} // non-nil while held; closed by Release
	marker  []byte        // while held, what Redis sends waits from a read holding this on
	conns   []net.Conn
	accepts int
}

func startProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	var wg sync.WaitGroup
	wg.Go(p.accept)
	tb.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.Release()
		wg.Wait()
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.accepts++
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(up, c)
			_ = up.Close()
		}()
		go p.copyHeld(c, up)
	}
}

// copyHeld copies Redis's side to the client, waiting while held.
func (p *proxy) copyHeld(c, up net.Conn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.mu.Lock()
			held, marker := p.held, p.marker
			p.mu.Unlock()
			if held != nil && bytes.Contains(buf[:n], marker) {
				<-held
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = up.Close()
			}
			return
		}
	}
}

// Hold makes what Redis sends wait until Release, from the first read
// that holds marker on ("" for any): say, a connection's handshake
// passes and its first confirmation waits.
func (p *proxy) Hold(marker string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held == nil {
		p.held = make(chan struct{})
	}
	p.marker = []byte(marker)
}

func (p *proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held != nil {
		close(p.held)
		p.held = nil
	}
}

// Cut closes every connection made so far.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// Accepts returns how many connections the proxy has made.
func (p *proxy) Accepts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}
