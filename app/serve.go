package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/internal/auth"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// ServeConfig is the configuration of `wsbus serve`.
type ServeConfig struct {
	common
	Listen           string
	NodeID           string
	Partitions       int
	Insecure         bool
	JWTSecret        string
	JWTPublicKey     string
	JWTAudience      string
	JWTIssuer        string
	PublishKey       string
	AllowedOrigins   stringList
	MaxConnections   int
	UpgradeRate      float64
	UpgradeBurst     int
	HandshakeTimeout time.Duration
	MaxHandshake     int
	WorkerIdle       time.Duration

	auth             *auth.Verifier // built by check from the JWT flags; nil without a key
	MaxMessage       int
	MaxQueue         int
	SlowConsumer     slowConsumer
	MaxData          int
	MaxSubscriptions int
	HistoryLen       int
	HistoryTTL       time.Duration
	Retention        time.Duration
	LeaseTTL         time.Duration
	PingInterval     time.Duration
	DrainTimeout     time.Duration
	DrainRate        int
	LogLevel         string
	DebugAddr        string
}

func (c *ServeConfig) register(fs *flag.FlagSet) {
	c.common.register(fs)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "address for WebSocket and HTTP")
	fs.StringVar(&c.NodeID, "node-id", "", "name of this node in leases and consumer groups (default hostname + listen port)")
	fs.IntVar(&c.Partitions, "partitions", migrations.DefaultPartitions, "partition count if this start creates the bus")
	fs.BoolVar(&c.Insecure, "insecure", false, "allow running without a token key: every client may then read every topic, from any origin, and publish over HTTP without a key (development only; a --jwt-* key still applies if given)")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "HS256 secret of client tokens")
	fs.StringVar(&c.JWTPublicKey, "jwt-public-key", "", "PEM file of the RS256/ES256 public key of client tokens")
	fs.StringVar(&c.JWTAudience, "jwt-audience", "", "when set, tokens must carry this aud")
	fs.StringVar(&c.JWTIssuer, "jwt-issuer", "", "when set, tokens must carry this iss")
	fs.StringVar(&c.PublishKey, "publish-key", "", "API key for POST /v1/publish (Authorization: Bearer KEY); without one, HTTP publishing is open in --insecure mode and off otherwise")
	fs.Var(&c.AllowedOrigins, "allowed-origins", "Origin a browser may connect from, e.g. https://app.example (repeat or comma-separate; \"*\" for any); default: the gateway's own host, or any with --insecure")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "WebSocket connections per node; more are refused with 503 (0: only the fd limit)")
	fs.Float64Var(&c.UpgradeRate, "upgrade-rate", 2000, "WebSocket upgrades admitted per second; a storm waits its turn or gets 503")
	fs.IntVar(&c.UpgradeBurst, "upgrade-burst", 200, "WebSocket upgrades admitted at once above the rate")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 5*time.Second, "a connection that has not finished its handshake by then is cut")
	fs.IntVar(&c.MaxHandshake, "max-handshake-bytes", 8<<10, "largest handshake request line and headers (bigger: 431)")
	fs.DurationVar(&c.WorkerIdle, "worker-idle", 10*time.Second, "a WebSocket worker goroutine with no work for this long exits")
	fs.IntVar(&c.MaxMessage, "max-message", 64<<10, "largest client message in bytes (bigger: close 1009)")
	fs.IntVar(&c.MaxQueue, "max-queue", 1<<20, "bytes queued to one client before it counts as slow (see --slow-consumer)")
	c.SlowConsumer = slowConsumer(ws.OverflowDrop)
	fs.Var(&c.SlowConsumer, "slow-consumer", "what to do with a client that has more than --max-queue bytes waiting, `mode` lag or close: lag (its queued events are dropped and it is caught up from history at the pace it reads, on the same connection; closed with 4001 only when history no longer holds what it missed) or close (closed with 4001 at once; it reconnects and resumes)")
	fs.IntVar(&c.MaxData, "max-data", streams.DefaultMaxData, "largest event payload in bytes (bigger: dead-lettered)")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", 128, "topics per connection")
	fs.IntVar(&c.HistoryLen, "history-len", 1000, "about how many events each topic's history keeps")
	fs.DurationVar(&c.HistoryTTL, "history-ttl", 24*time.Hour, "a topic's history expires after this long without events")
	fs.DurationVar(&c.Retention, "retention", 24*time.Hour, "how long processed ingress entries are kept")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", 5*time.Second, "partition lease time to live: a dead node's partitions move within it")
	fs.DurationVar(&c.PingInterval, "ping-interval", 25*time.Second, "ping a client silent for this long; close it after three times as long")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long the drain may take before the remaining clients are cut")
	fs.IntVar(&c.DrainRate, "drain-rate", 1000, "on SIGTERM, clients closed with 4002 per second, so their reconnects do not storm the fleet (0: all at once)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.DebugAddr, "debug-addr", "", "serve Go's pprof profiles on this address, e.g. 127.0.0.1:6060 (off by default: never expose it)")
}

func (c *ServeConfig) check() error {
	if c.JWTSecret != "" && c.JWTPublicKey != "" {
		return errors.New("give --jwt-secret or --jwt-public-key, not both")
	}
	if c.JWTSecret == "" && c.JWTPublicKey == "" && !c.Insecure {
		return errors.New("no authentication key configured: give --jwt-secret or --jwt-public-key, or --insecure for development")
	}
	var err error
	if c.auth, err = c.verifier(); err != nil {
		return err
	}
	if strings.ContainsAny(c.NodeID, " \t\r\n") {
		return fmt.Errorf("--node-id %q must not contain spaces", c.NodeID)
	}
	return nil
}

// slowConsumer is the --slow-consumer flag, lag or close: the WebSocket
// edge's overflow policy (lag is ws.OverflowDrop with the Gateway catching
// the client up from history).
type slowConsumer ws.Overflow

func (s *slowConsumer) String() string {
	if ws.Overflow(*s) == ws.OverflowDrop {
		return "lag"
	}
	return "close"
}

func (s *slowConsumer) Set(v string) error {
	switch v {
	case "lag":
		*s = slowConsumer(ws.OverflowDrop)
	case "close":
		*s = slowConsumer(ws.OverflowClose)
	default:
		return fmt.Errorf("%q is neither lag nor close", v)
	}
	return nil
}

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve [flags]", stderr)
	var c ServeConfig
	c.register(fs)
	if err := parseOrUsage(fs, args); err != nil {
		return err
	}
	if !wasSet(fs, "partitions") {
		c.Partitions = 0 // take the existing bus's count
	}
	if err := c.check(); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	redis.SetLogger(redisLogger{logger})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return Serve(ctx, c, logger, func(string) {})
}

// redisLogger puts go-redis's own messages (a node's pool failing to dial,
// many times a second while a Redis node is down) into the node's log at
// debug level: the gateway reports what they cost it (a partition's
// pipeline, the live channels) at warn.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)), "from", "go-redis")
}

// Serve runs a gateway node until ctx is done, then drains it: leases are
// released first, then clients are closed with 4002. ready is called with
// the listening address once the node serves.
func Serve(ctx context.Context, c ServeConfig, logger *slog.Logger, ready func(addr string)) error {
	boot, err := c.client(0)
	if err != nil {
		return err
	}
	keys := streams.Keys{Prefix: c.prefix}
	applied, err := migrations.Run(ctx, boot, keys, c.Partitions)
	if err != nil {
		_ = boot.Close()
		return fmt.Errorf("migrating the bus: %w", err)
	}
	if applied > 0 {
		logger.Info("bus migrated", "prefix", c.prefix, "schema", migrations.Latest())
	}
	n, err := streams.Partitions(ctx, boot, keys)
	_ = boot.Close()
	if err != nil {
		return err
	}
	// Every owned partition holds one connection in a blocking read.
	rdb, err := c.client(n + 64)
	if err != nil {
		return err
	}
	defer rdb.Close()
	return serveBus(ctx, c, logger, rdb, keys, n, ready)
}

func serveBus(ctx context.Context, c ServeConfig, logger *slog.Logger, rdb redis.UniversalClient, keys streams.Keys, n int, ready func(string)) error {
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return err
	}
	// Drain closes the listener once Serve has it; this closes it on the
	// error paths before (a second Close is harmless).
	defer ln.Close()
	if c.NodeID == "" {
		host, _ := os.Hostname()
		c.NodeID = host + ":" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	}
	owner, err := bus.NewOwner(bus.OwnerConfig{
		Redis: rdb, Keys: keys, Partitions: n, Node: c.NodeID,
		LeaseTTL: c.LeaseTTL, MaxData: c.MaxData, HistoryLen: c.HistoryLen,
		HistoryTTL: c.HistoryTTL, Retention: c.Retention, Logger: logger,
	})
	if err != nil {
		return err
	}
	verifier := c.auth
	origins := c.AllowedOrigins.split()
	if len(origins) == 0 && c.Insecure {
		origins = []string{"*"}
	}
	gw, err := bus.NewGateway(bus.GatewayConfig{
		Redis: rdb, Keys: keys, Partitions: n, Auth: verifier, AllowedOrigins: origins,
		MaxSubscriptions: c.MaxSubscriptions, Logger: logger,
		// A lagging client's history page and its queue together stay
		// near --max-queue.
		HistoryBytes: c.MaxQueue / 4, MaxData: c.MaxData,
	})
	if err != nil {
		return fmt.Errorf("starting the gateway: %w", err)
	}
	defer gw.Close()
	h := &httpAPI{cfg: c, rdb: rdb, owner: owner, gw: gw, auth: verifier,
		pub: streams.NewPublisher(rdb, keys, c.MaxData), hist: streams.NewHistory(rdb, keys, n)}
	srv, err := ws.New(ws.Config{
		Handler: gw, HTTP: h.mux(), MaxMessage: c.MaxMessage, MaxQueue: c.MaxQueue, Overflow: ws.Overflow(c.SlowConsumer),
		PingInterval: c.PingInterval, Logger: logger, MaxConnections: c.MaxConnections,
		UpgradeRate: c.UpgradeRate, UpgradeBurst: c.UpgradeBurst,
		HandshakeTimeout: c.HandshakeTimeout, MaxHandshakeBytes: c.MaxHandshake,
		WorkerIdle: c.WorkerIdle,
	})
	if err != nil {
		return fmt.Errorf("starting the WebSocket server: %w", err)
	}
	h.ws = srv
	if c.DebugAddr != "" {
		defer servePprof(c.DebugAddr, logger)()
	}
	ownerCtx, stopOwner := context.WithCancel(context.Background())
	ownerDone := make(chan struct{})
	go func() {
		defer close(ownerDone)
		_ = owner.Run(ownerCtx)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	h.started.Store(true)
	addr := ln.Addr().String()
	logger.Info("wsbus serving", "addr", addr, "node", c.NodeID, "websocket", "ws://"+addr+"/v1/ws", "partitions", n)
	if verifier == nil {
		logger.Warn("insecure mode: no authentication; demo page at http://" + addr + "/")
	}
	ready(addr)

	served := false
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		served = true
	}
	logger.Info("draining: releasing leases, then closing clients with 4002")
	stopOwner()
	<-ownerDone
	drainCtx, cancel := context.WithTimeout(context.Background(), c.DrainTimeout)
	defer cancel()
	_ = srv.Drain(drainCtx, ws.CloseDraining, "node draining: reconnect and resume", c.DrainRate)
	if !served {
		err = <-serveErr // Serve returns once Drain has closed its listener
	}
	if errors.Is(err, ws.ErrServerClosed) {
		err = nil
	}
	return err
}

// verifier builds the token verifier; nil without a key (--insecure).
func (c *ServeConfig) verifier() (*auth.Verifier, error) {
	cfg := auth.Config{Audience: c.JWTAudience, Issuer: c.JWTIssuer}
	switch {
	case c.JWTSecret != "":
		cfg.Secret = []byte(c.JWTSecret)
	case c.JWTPublicKey != "":
		b, err := os.ReadFile(c.JWTPublicKey)
		if err != nil {
			return nil, fmt.Errorf("reading --jwt-public-key: %w", err)
		}
		if cfg.PublicKey, err = auth.ParsePublicKey(b); err != nil {
			return nil, fmt.Errorf("--jwt-public-key %s: %w", c.JWTPublicKey, err)
		}
	default:
		return nil, nil
	}
	return auth.New(cfg)
}
