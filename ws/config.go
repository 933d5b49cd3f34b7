package ws

import (
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Close codes sent by the server: those of RFC 6455, and the one of this
// package's own queue limit. An application's own codes (4000-4999) are
// its to define and pass to Conn.Close and Server.Drain.
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001
	CloseProtocolError  = 1002
	CloseInvalidPayload = 1007
	ClosePolicy         = 1008
	CloseMessageTooBig  = 1009
	// CloseSlowConsumer closes a connection whose queue would pass
	// Config.MaxQueue: the client reconnects and resumes.
	CloseSlowConsumer = 4001
)

// Overflow is what a Server does when a connection's queue would pass
// Config.MaxQueue.
type Overflow uint8

const (
	// OverflowClose closes the connection with CloseSlowConsumer: the
	// client reconnects and resumes.
	OverflowClose Overflow = iota
	// OverflowDrop drops the frames queued by Conn.Offer and not yet
	// begun on the wire, keeps the connection open and tells the Handler,
	// which must be an OverflowHandler, so that it can send them again at
	// the pace the client reads (from a log, say). Frames queued by Send
	// and SendWait are kept; only those can still make it close.
	OverflowDrop
)

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// Handler receives connections and their messages. Required.
	Handler Handler
	// HTTP serves every request that is not a WebSocket upgrade of Path.
	// Nil means 404 for all of them.
	HTTP http.Handler
	// Path is the WebSocket endpoint, matched exactly (a query string
	// may follow). Zero value means "/".
	Path string
	// MaxMessage is the largest client message, in bytes, after
	// reassembling fragments; bigger ones are closed with 1009.
	// Zero value means 64 KiB: client messages are small JSON commands.
	MaxMessage int
	// MaxQueue is how many bytes may wait to be written to one connection
	// before it is closed with 4001, or, under OverflowDrop, before the
	// frames queued by Offer are dropped. Zero value means 1 MiB: about a
	// thousand typical events, enough to ride out a short stall.
	MaxQueue int
	// Overflow is what happens when a connection's queue would pass
	// MaxQueue. Zero value means OverflowClose.
	Overflow Overflow
	// HandshakeTimeout bounds the time from accept to a finished upgrade.
	// Zero value means 5 s.
	HandshakeTimeout time.Duration
	// ReadTimeout bounds reading the rest of a frame once its first byte
	// arrived. Zero value means 5 s.
	ReadTimeout time.Duration
	// WriteTimeout bounds how long a write may wait for room in the
	// socket before the connection is cut. Zero value means 10 s.
	WriteTimeout time.Duration
	// PingInterval is how long a connection may be silent before the server
	// pings it: each connection waits between 3/4 of it and all of it, so
	// connections opened together are not pinged together. Zero value means
	// 25 s, under common 30 s proxy timeouts.
	PingInterval time.Duration
	// IdleTimeout closes a connection silent for this long (a pong counts as
	// activity). Zero value means 3 × PingInterval.
	IdleTimeout time.Duration
	// Workers bounds the goroutines that read and write connections. Zero
	// value means 256: enough to hide Redis round trips made from message
	// handlers on two cores.
	Workers int
	// WorkerIdle is how long a worker waits for work before it exits, so
	// an idle server keeps no goroutine per past burst. Zero value means
	// 10 s: long enough that a steady trickle reuses its workers instead
	// of starting one per task.
	WorkerIdle time.Duration
	// MaxConnections bounds open WebSocket connections, counting upgrades
	// being answered; an upgrade past it is refused with 503. Zero value
	// means no bound but the process's file-descriptor limit.
	MaxConnections int
	// UpgradeRate bounds WebSocket upgrades per second; UpgradeBurst is how
	// many may come at once. An upgrade waits for its turn within the
	// handshake time and is refused with 503 (Retry-After) past it, so a
	// reconnect storm is admitted at a steady pace instead of flooding the
	// node. Zero values mean 2000 per second and a burst of 200.
	UpgradeRate  float64
	UpgradeBurst int
	// MaxHandshakeBytes bounds the request line and headers of a
	// handshake; a bigger one is answered 431. Zero value means 8 KiB.
	MaxHandshakeBytes int
	// MaxPendingHandshakes bounds connections accepted and not yet
	// upgraded; past it the accept loop cools down, leaving new
	// connections in the kernel's backlog. Zero value means 10000.
	MaxPendingHandshakes int
	// Logger receives connection errors at debug level. Zero value means
	// slog.Default().
	Logger *slog.Logger
	// AfterUpgradeBurst is called on the keepalive goroutine when a burst
	// of upgrades is over: at least 1000 since the last call, then none
	// for about 5 s. The buffers and garbage of thousands of handshakes sit
	// in the heap's headroom until the next collection, so a process that
	// holds mostly idle connections may want to return them to the system
	// here (debug.FreeOSMemory), at the cost of a collection; the server
	// has let go of its idle handshake states just before. Nil means
	// nothing more is done.
	AfterUpgradeBurst func()
}

func (c Config) withDefaults() Config {
	if c.Path == "" {
		c.Path = "/"
	}
	if c.MaxMessage <= 0 {
		c.MaxMessage = 64 << 10
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 1 << 20
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 5 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 3 * c.PingInterval
	}
	if c.Workers <= 0 {
		c.Workers = 256
	}
	if c.WorkerIdle <= 0 {
		c.WorkerIdle = 10 * time.Second
	}
	if c.UpgradeRate <= 0 {
		c.UpgradeRate = 2000
	}
	if c.UpgradeBurst <= 0 {
		c.UpgradeBurst = 200
	}
	if c.MaxHandshakeBytes <= 0 {
		c.MaxHandshakeBytes = 8 << 10
	}
	if c.MaxPendingHandshakes <= 0 {
		c.MaxPendingHandshakes = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HTTP == nil {
		c.HTTP = http.NotFoundHandler()
	}
	return c
}

// Request is what a Handler learns of a WebSocket handshake. It and its
// byte slices are only valid until Handler.Open returns (they are reused
// by the next handshake): copy what must be kept.
type Request struct {
	// URI is the request target, e.g. "/ws?topic=a&since=0".
	URI []byte
	// Host, Origin and Authorization are the request headers of those
	// names (empty when absent).
	Host, Origin, Authorization []byte
	// RemoteAddr is the client's address.
	RemoteAddr net.Addr
	// State is set by Handler.Accept and handed to Handler.Open (the
	// verified identity of the client, say).
	State any
}

// OverflowHandler is a Handler that takes dropped frames back: a Server
// with Config.Overflow OverflowDrop needs one.
type OverflowHandler interface {
	Handler
	// Overflow is called on a worker once per overflow of c's queue, after
	// the frames queued by Offer were dropped unwritten. Offer refuses
	// frames until the Handler takes the dropped ones with c.Recover. It
	// should return soon: it runs on a worker the connections share.
	Overflow(c *Conn)
}

// Handler is the application behind the WebSocket edge. Its methods run on
// the Server's workers; they may block briefly (a Redis round trip) but
// should not wait on other connections.
type Handler interface {
	// Accept is called before the upgrade is answered. A non-nil error
	// refuses the handshake; use Reject to choose the HTTP status.
	Accept(r *Request) error
	// Open is called once the connection is upgraded. A connection that a
	// drain cuts before it is opened is never opened (nor Closed).
	Open(c *Conn, r *Request)
	// Message is called with each complete text or binary message. msg is
	// only valid until Message returns.
	Message(c *Conn, msg []byte)
	// Closed is called once when the connection is gone, never before
	// Open has returned.
	Closed(c *Conn)
}
