package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// failoverDialer dials the connections of a go-redis failover client and
// closes every one it dialed to a master once the client has moved to
// another.
//
// Told of a new master, go-redis's failover client closes the connections
// of its command pools to the old one, but not its pub/sub connections.
// After a SENTINEL FAILOVER the old master lives on, still a master until
// Sentinel makes it a replica of the new one 10 to 20 s later; a
// gateway's live channels stay subscribed there all that time and receive
// nothing, while the owners publish on the new master. The failover
// client dials data connections only to the master the Sentinels name, so
// its first dial to another data node is the move: the connections to the
// one before are closed, pub/sub included, and each is dialed again to
// the new master (the gateway catching its topics up from history).
//
// Sentinels are dialed through the same function: an address is a
// Sentinel when the URL names it or it answers ROLE as one (asked once per
// address, on a connection of its own, when go-redis found it through the
// others).
type failoverDialer struct {
	tls     *tls.Config // nil for plain TCP
	timeout time.Duration

	mu       sync.Mutex
	sentinel map[string]bool          // by address: a Sentinel or a data node, once known
	master   string                   // the data node that data connections were last dialed to
	conns    map[net.Conn]struct{}    // the open connections to master, as handed to go-redis
	probes   map[string]chan struct{} // addresses being asked ROLE, closed when known
}

// newFailoverDialer returns the dialer of a failover client of opt, which
// it reads the Sentinels' addresses, TLS and dial timeout from.
func newFailoverDialer(opt *redis.FailoverOptions) *failoverDialer {
	d := &failoverDialer{
		tls:      opt.TLSConfig,
		timeout:  cmp.Or(opt.DialTimeout, 5*time.Second), // go-redis's default
		sentinel: make(map[string]bool, len(opt.SentinelAddrs)),
		conns:    make(map[net.Conn]struct{}),
		probes:   make(map[string]chan struct{}),
	}
	for _, a := range opt.SentinelAddrs {
		d.sentinel[a] = true
	}
	return d
}

// Dial dials addr as go-redis would, then, for a data node, closes the
// connections to the master before it if addr is another.
func (d *failoverDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := d.dialRaw(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	sentinel, known := d.isSentinel(ctx, network, addr)
	if sentinel || !known {
		return conn, nil // not a data node, or not known to be one: left alone
	}
	t := track(conn, d)
	var stale []net.Conn
	d.mu.Lock()
	if addr != d.master {
		for c := range d.conns {
			stale = append(stale, c)
		}
		clear(d.conns)
		d.master = addr
	}
	d.conns[t] = struct{}{}
	d.mu.Unlock()
	for _, c := range stale {
		_ = c.Close()
	}
	return t, nil
}

// dialRaw dials as go-redis's failover client does by default.
func (d *failoverDialer) dialRaw(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := &net.Dialer{
		Timeout:         d.timeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3},
	}
	if d.tls == nil {
		return nd.DialContext(ctx, network, addr)
	}
	return (&tls.Dialer{NetDialer: nd, Config: d.tls}).DialContext(ctx, network, addr)
}

// isSentinel reports whether addr is a Sentinel, asking it ROLE the first
// time unless the URL named it; known is false when that could not be
// told (the address did not answer).
func (d *failoverDialer) isSentinel(ctx context.Context, network, addr string) (sentinel, known bool) {
	for {
		d.mu.Lock()
		s, ok := d.sentinel[addr]
		wait, asking := d.probes[addr]
		if !ok && !asking {
			d.probes[addr] = make(chan struct{})
		}
		d.mu.Unlock()
		switch {
		case ok:
			return s, true
		case asking:
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return false, false
			}
		}
		s, ok = d.askRole(ctx, network, addr)
		d.mu.Lock()
		if ok {
			d.sentinel[addr] = s
		}
		close(d.probes[addr])
		delete(d.probes, addr)
		d.mu.Unlock()
		return s, ok
	}
}

// askRole asks addr ROLE without credentials: a Sentinel answers
// "sentinel"; a data node answers its role, or refuses without AUTH.
func (d *failoverDialer) askRole(ctx context.Context, network, addr string) (sentinel, known bool) {
	c := redis.NewClient(&redis.Options{
		Addr: addr, Network: network, Dialer: d.dialRaw,
		Protocol: 2, DisableIdentity: true, // no HELLO or CLIENT SETINFO before the question
		MaxRetries: -1, PoolSize: 1,
	})
	defer c.Close()
	role, err := c.Do(ctx, "ROLE").Slice()
	var rerr redis.Error
	switch {
	case err == nil && len(role) > 0:
		return role[0] == "sentinel", true
	case err != nil && errors.As(err, &rerr):
		return false, true // a reply: a data node that wants AUTH
	}
	return false, false
}

// track wraps conn so that closing it, by go-redis or by d, forgets it.
// The wrapper keeps what go-redis looks for on a connection: SyscallConn
// (its check of idle TCP connections) and NetConn (under TLS).
func track(conn net.Conn, d *failoverDialer) net.Conn {
	t := trackedConn{Conn: conn, d: d}
	if sc, ok := conn.(syscall.Conn); ok {
		return &trackedSysConn{trackedConn: t, sc: sc}
	}
	return &t
}

type trackedConn struct {
	net.Conn
	d *failoverDialer
}

// Close closes the connection and forgets it.
func (t *trackedConn) Close() error {
	t.d.forget(t)
	return t.Conn.Close()
}

// NetConn returns the connection under t.
func (t *trackedConn) NetConn() net.Conn { return t.Conn }

type trackedSysConn struct {
	trackedConn
	sc syscall.Conn
}

// Close closes the connection and forgets it.
func (t *trackedSysConn) Close() error {
	t.d.forget(t)
	return t.Conn.Close()
}

// SyscallConn returns the raw connection under t.
func (t *trackedSysConn) SyscallConn() (syscall.RawConn, error) { return t.sc.SyscallConn() }

func (d *failoverDialer) forget(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}
