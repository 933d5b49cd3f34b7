package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	wsbus "github.com/wsbus/wsbus/clients/go"
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
	CanaryInterval   time.Duration
	CanaryTimeout    time.Duration
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
	fs.StringVar(&c.PublishKey, "publish-key", "", "API key for POST /v1/publish (Authorization: Bearer KEY), also the operator key of the status page GET /status; without one, HTTP publishing and the status page are open in --insecure mode and off otherwise")
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
	fs.DurationVar(&c.CanaryInterval, "canary-interval", 2*time.Second, "publish a canary event to each partition this node owns this often, and read every partition's canary back through this node's own WebSocket path (the wsbus_canary_* metrics; topics starting with $canary. are reserved for it); 0 turns the canary off")
	fs.DurationVar(&c.CanaryTimeout, "canary-timeout", 5*time.Second, "a canary event of this node's that has not arrived this long after it was published counts as lost")
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
	if c.CanaryInterval < 0 || c.CanaryInterval > 0 && c.CanaryTimeout <= 0 {
		return errors.New("--canary-interval must not be negative, and --canary-timeout must be positive when the canary is on")
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
	fs := newFlagSet("serve", "serve [flags]", stdout, stderr)
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
	collectOften()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return Serve(ctx, c, logger, func(string) {})
}

// gcPercent is the gateway's GOGC unless the environment sets one. A
// gateway's heap is mostly connections that live for hours, made in
// bursts (a deploy, a reconnect storm) among the garbage of their
// handshakes and history reads; a collection frees that garbage but not
// the pages a connection still lives in, and at Go's default (100) the
// holes it leaves and the room the heap grows into were a third of a
// gateway's memory per connection. At 25 the heap grows a quarter past
// what is live before a collection: 19,000 connections each on two
// topics measured 1,117-1,226 B RSS a connection against 1,435-1,624 B
// at 100, for no CPU measurable over the run (docs/NOTES.md). GOMEMLIMIT
// alone leaves it at 25: the limit caps the heap, the target still keeps
// it small below the cap.
const gcPercent = 25

// collectOften sets the collector's target to gcPercent unless GOGC is in
// the environment (set, even empty: the runtime has read it).
func collectOften() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}

// redisLogger puts go-redis's own messages (a node's pool failing to dial,
// many times a second while a Redis node is down) into the node's log at
// debug level: the gateway reports what they cost it (a partition's
// pipeline, the live channels) at warn.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)), "from", "go-redis")
}

// wsPath is the gateway's WebSocket endpoint; every other path is the
// HTTP API's.
const wsPath = "/v1/ws"

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
	// The lease traffic has connections of its own: a renewal waiting
	// behind a resume storm's history reads for one of rdb's would lapse
	// while its node holds the lease.
	leases, err := c.leaseClient()
	if err != nil {
		return err
	}
	defer leases.Close()
	return serveBus(ctx, c, logger, rdb, leases, keys, n, ready)
}

func serveBus(ctx context.Context, c ServeConfig, logger *slog.Logger, rdb, leases redis.UniversalClient, keys streams.Keys, n int, ready func(string)) error {
	// No TCP keepalive on the clients' sockets: the WebSocket pings
	// (--ping-interval) find a dead peer, and Go's default keepalive
	// would send a probe on every idle connection every 15 s (over a
	// million connections, 67,000 a second with as many answers: enough
	// to drop loopback packets and abort connections whose probes went
	// unanswered).
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", c.Listen)
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
	obs := newObserved()
	owner, err := bus.NewOwner(bus.OwnerConfig{
		Redis: rdb, LeaseRedis: leases, Keys: keys, Partitions: n, Node: c.NodeID,
		LeaseTTL: c.LeaseTTL, MaxData: c.MaxData, HistoryLen: c.HistoryLen,
		HistoryTTL: c.HistoryTTL, Retention: c.Retention, Logger: logger,
		ApplyTime: func(d time.Duration) { obs.apply.Observe(d.Seconds()) },
	})
	if err != nil {
		return err
	}
	verifier := c.auth
	var tokens bus.TokenVerifier // nil without a key (a nil *auth.Verifier in it would not be nil)
	if verifier != nil {
		tokens = verifier
	}
	origins := c.AllowedOrigins.split()
	if len(origins) == 0 && c.Insecure {
		origins = []string{"*"}
	}
	canaryKey, err := newCanaryKey()
	if err != nil {
		return err
	}
	gw, err := bus.NewGateway(bus.GatewayConfig{
		Redis: rdb, Keys: keys, Partitions: n, Auth: tokens, AllowedOrigins: origins,
		MaxSubscriptions: c.MaxSubscriptions, Logger: logger, CanaryKey: canaryKey,
		// A lagging client's history page and its queue together stay
		// near --max-queue.
		HistoryBytes: c.MaxQueue / 4, MaxData: c.MaxData,
		DeliveryLatency: func(d time.Duration) { obs.delivery.Observe(d.Seconds()) },
	})
	if err != nil {
		return fmt.Errorf("starting the gateway: %w", err)
	}
	defer gw.Close()
	errs := &redisErrors{}
	rdb.AddHook(errs)
	leases.AddHook(errs)
	pub := streams.NewPublisher(rdb, keys, c.MaxData)
	canary := newCanary(canaryConfig{
		Interval: c.CanaryInterval, Timeout: c.CanaryTimeout, Node: c.NodeID,
		URL: "ws://" + ln.Addr().String() + wsPath, Key: canaryKey, Partitions: n,
		MaxSubscriptions: c.MaxSubscriptions, Publish: pub.Publish, Owned: owner.Partitions, Logger: logger,
	})
	h := &httpAPI{cfg: c, rdb: rdb, owner: owner, gw: gw, auth: verifier, keys: keys, partitions: n, redisErrors: errs, observed: obs,
		pub: pub, hist: streams.NewHistory(rdb, keys, n), canary: canary}
	srv, err := ws.New(ws.Config{
		Handler: gw, HTTP: h.mux(), Path: wsPath, MaxMessage: c.MaxMessage, MaxQueue: c.MaxQueue, Overflow: ws.Overflow(c.SlowConsumer),
		PingInterval: c.PingInterval, Logger: logger, MaxConnections: c.MaxConnections,
		UpgradeRate: c.UpgradeRate, UpgradeBurst: c.UpgradeBurst,
		HandshakeTimeout: c.HandshakeTimeout, MaxHandshakeBytes: c.MaxHandshake,
		WorkerIdle: c.WorkerIdle,
		// Return memory to the system once a burst of upgrades is over:
		// the buffers and garbage of thousands of handshakes otherwise sit
		// in the heap's headroom, and an idle node would hold about twice
		// what its connections need. Again once the burst's idle workers
		// have exited: their stacks (about 80 B a connection after a
		// burst of 19,000) are freed only then.
		AfterUpgradeBurst: func() {
			debug.FreeOSMemory()
			time.AfterFunc(c.WorkerIdle+time.Second, debug.FreeOSMemory)
		},
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
	metaDone := make(chan struct{})
	go func() {
		defer close(metaDone)
		keepMeta(ownerCtx, rdb, keys, n, logger)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	h.started.Store(true)
	addr := ln.Addr().String()
	logger.Info("wsbus serving", "addr", addr, "node", c.NodeID, "websocket", "ws://"+addr+wsPath, "partitions", n)
	if verifier == nil {
		logger.Warn("insecure mode: no authentication; demo page at http://" + addr + "/")
	}
	ready(addr)
	canary.start()

	served := false
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		served = true
	}
	// The canary first: its connection is not one to drain, and its
	// events, published no more, are awaited no more.
	canary.stop()
	logger.Info("draining: releasing leases, then closing clients with 4002")
	stopOwner()
	<-ownerDone
	<-metaDone
	drainCtx, cancel := context.WithTimeout(context.Background(), c.DrainTimeout)
	defer cancel()
	if err := srv.Drain(drainCtx, wsbus.CloseDraining, "node draining: reconnect and resume", c.DrainRate); err != nil {
		logger.Warn("drain cut short at --drain-timeout: the clients left were closed at once", "err", err)
	} else {
		logger.Info("drained")
	}
	if !served {
		err = <-serveErr // Serve returns once Drain has closed its listener
	}
	if errors.Is(err, ws.ErrServerClosed) {
		err = nil
	}
	return err
}

// keepMeta writes back the bus's meta every metaInterval until ctx is
// done, when Redis has lost it (migrations.Restore).
func keepMeta(ctx context.Context, rdb redis.Cmdable, keys streams.Keys, n int, logger *slog.Logger) {
	t := time.NewTicker(metaInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wrote, err := migrations.Restore(ctx, rdb, keys, n)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Debug("checking the bus meta", "err", err) // Redis errors are counted and reported elsewhere
		case wrote:
			logger.Warn("the bus meta was missing (Redis lost its data?): written back", "key", keys.Meta(), "partitions", n)
		}
	}
}

// metaInterval is how often a gateway checks that the bus's meta is there.
const metaInterval = time.Second

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

// newCanaryKey returns a random key that admits this process's own canary
// client (bus.GatewayConfig.CanaryKey): 32 random bytes, in hex.
func newCanaryKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making the canary key: %w", err)
	}
	return hex.EncodeToString(b), nil
}
