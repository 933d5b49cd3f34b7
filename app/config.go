package app

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// stringList is a flag that may be given several times. Its values
// accumulate within one source of configuration (the file, the
// environment, the command line); a source of higher precedence that gives
// it replaces the lower ones' values entirely (see parse), so that, say,
// --allowed-origins on the command line is the whole allow-list and not an
// addition to WSBUS_ALLOWED_ORIGINS.
type stringList struct {
	values []string
	// stale is set when a new source begins: its first value starts the
	// list afresh.
	stale bool
}

func (l *stringList) String() string { return strings.Join(l.values, ",") }
func (l *stringList) Set(v string) error {
	if l.stale {
		l.values, l.stale = nil, false
	}
	l.values = append(l.values, v)
	return nil
}

// newSource marks the start of a source of higher precedence.
func (l *stringList) newSource() { l.stale = true }

// split returns the values with comma-separated ones split apart.
func (l *stringList) split() []string {
	var out []string
	for _, v := range l.values {
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// common are the flags every command has.
type common struct {
	redis  stringList
	prefix string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.Var(&c.redis, "redis", "Redis `URL`: redis://[user:pass@]host:port/db for one server; redis+cluster://[user:pass@]h1:p1,h2:p2 for Redis Cluster, or give --redis once per cluster node; redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER[?db=N] for the master MASTER that the Sentinels h1, h2... watch (the password is the master's); rediss, rediss+cluster and rediss+sentinel for TLS (default redis://127.0.0.1:6379/0)")
	fs.StringVar(&c.prefix, "prefix", "wsbus", "prefix of every Redis key of the bus")
}

// args gives the flags that reproduce c, for a child process.
func (c *common) args() []string {
	out := []string{"--prefix", c.prefix}
	for _, u := range c.redis.values {
		out = append(out, "--redis", u)
	}
	return out
}

// client opens the Redis client the --redis URLs describe (see
// parseRedis). poolSize 0 keeps go-redis's default.
func (c *common) client(poolSize int) (redis.UniversalClient, error) {
	return c.newClient(poolSize, 0)
}

// leaseClient opens the client of a node's lease traffic (see
// bus.OwnerConfig.LeaseRedis): two connections (a node of a Cluster,
// two to each master), its pipelines on them too, not on a pipeline pool
// of their own.
func (c *common) leaseClient() (redis.UniversalClient, error) {
	return c.newClient(2, -1)
}

// newClient is client with a pipeline pool of pipelinePool connections
// (0: go-redis's default; below 0: none, pipelines use the main pool).
func (c *common) newClient(poolSize, pipelinePool int) (redis.UniversalClient, error) {
	t, err := parseRedis(c.redis.values)
	if err != nil {
		return nil, err
	}
	switch {
	case t.single != nil:
		opt := t.single
		opt.PoolSize = max(poolSize, opt.PoolSize)
		opt.PipelinePoolSize = cmp.Or(pipelinePool, opt.PipelinePoolSize)
		opt.ContextTimeoutEnabled = true
		lean(&opt.ReadBufferSize, &opt.WriteBufferSize, &opt.PipelineReadBufferSize, &opt.PipelineWriteBufferSize)
		idle(&opt.MaxIdleConns, opt.MinIdleConns)
		return redis.NewClient(opt), nil
	case t.failover != nil:
		opt := t.failover
		opt.PoolSize = poolSize
		opt.PipelinePoolSize = cmp.Or(pipelinePool, opt.PipelinePoolSize)
		opt.ContextTimeoutEnabled = true
		// Pub/sub connections too leave a master that Sentinel replaced.
		opt.Dialer = newFailoverDialer(opt).Dial
		lean(&opt.ReadBufferSize, &opt.WriteBufferSize, &opt.PipelineReadBufferSize, &opt.PipelineWriteBufferSize)
		idle(&opt.MaxIdleConns, opt.MinIdleConns)
		return redis.NewFailoverClient(opt), nil
	}
	opt := t.cluster
	opt.PoolSize = poolSize
	opt.PipelinePoolSize = cmp.Or(pipelinePool, opt.PipelinePoolSize)
	opt.ContextTimeoutEnabled = true
	// go-redis keeps writing to a failed master until it reloads the
	// slot map, every 60 s by default; MOVED replies reload it sooner
	// only once a new master answers.
	opt.ClusterStateReloadInterval = clusterReload
	lean(&opt.ReadBufferSize, &opt.WriteBufferSize, &opt.PipelineReadBufferSize, &opt.PipelineWriteBufferSize)
	idle(&opt.MaxIdleConns, opt.MinIdleConns)
	return redis.NewClusterClient(opt), nil
}

// clusterReload is how often a Redis Cluster's slot map is read again.
const clusterReload = 5 * time.Second

// redisBuffer is the read and write buffer of each Redis connection.
// go-redis defaults to 32 KiB each (128 KiB for pipelines); a gateway keeps
// a connection per partition and grows its pool in subscribe storms, so
// the defaults cost megabytes of heap for nothing: replies larger than the
// buffer are read in pieces.
const redisBuffer = 8 << 10

// lean sets unset buffer sizes to redisBuffer.
func lean(sizes ...*int) {
	for _, s := range sizes {
		if *s == 0 {
			*s = redisBuffer
		}
	}
}

// maxIdle is how many idle connections a Redis pool keeps (per node of a
// cluster). A subscribe or resume storm has a history read in flight on
// every worker, and go-redis would keep every connection it opened for it
// (it closes idle ones only when it hands them out again): over a hundred
// at 16 KiB of buffers each, 120 bytes per connection of a gateway holding
// 19,000. Connections in a blocking read are in use, not idle, so the
// owned partitions' readers are not limited by this.
const maxIdle = 16

// idle sets an unset idle-connection limit to maxIdle, or to the URL's
// min_idle_conns when that is more: a limit under the minimum would close
// at every Put a connection the pool dials again at every Get.
func idle(n *int, minIdle int) {
	if *n == 0 {
		*n = max(maxIdle, minIdle)
	}
}

// withRedis runs fn with a client of the bus and a context that ends
// after timeout: the shape of every one-shot command.
func (c *common) withRedis(timeout time.Duration, fn func(ctx context.Context, rdb redis.UniversalClient, keys streams.Keys) error) error {
	rdb, keys, err := c.open()
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return fn(ctx, rdb, keys)
}

// open returns a client of the bus for a command, which closes it.
// go-redis's own messages (a line on stderr per failed dial) are dropped:
// the command's error says once what failed.
func (c *common) open() (redis.UniversalClient, streams.Keys, error) {
	redis.SetLogger(redisLogger{slog.New(slog.DiscardHandler)})
	rdb, err := c.client(0)
	return rdb, streams.Keys{Prefix: c.prefix}, err
}

// printJSON writes v indented, for --json output.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parse reads configuration in order of precedence: command line, then
// WSBUS_* environment variables, then the --config file, then defaults.
// Sources are applied from the lowest up, each overriding the ones before;
// a list flag a source gives replaces what lower sources gave. It
// returns flag.ErrHelp for --help, errUsage for a mistake on the command
// line (which the flag package printed), else the file's or the
// environment's error, if any.
func parse(fs *flag.FlagSet, args []string) error {
	var file string
	fs.StringVar(&file, "config", "", "a `file` of \"name = value\" lines, one per flag (environment WSBUS_CONFIG)")
	newSource(fs)
	fileErr := applyFile(fs, configPath(args))
	newSource(fs)
	envErr := applyEnv(fs)
	newSource(fs)
	// The command line is applied last but answered first: its --help is
	// printed, and its mistakes told, whatever the file or the
	// environment hold.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage // the flag package printed the problem
	}
	return cmp.Or(fileErr, envErr)
}

// newSource tells every list flag of fs that a source of higher precedence
// begins.
func newSource(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if l, ok := f.Value.(interface{ newSource() }); ok {
			l.newSource()
		}
	})
}

// applyEnv sets each flag that has a WSBUS_* environment variable.
func applyEnv(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if ok && err == nil && f.Name != "config" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s: %w", envName(f.Name), e)
			}
		}
	})
	return err
}

// envName is the environment variable of a flag: --node-id is WSBUS_NODE_ID.
func envName(flagName string) string {
	return "WSBUS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func configPath(args []string) string {
	for i, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if v, ok := strings.CutPrefix(a, "config="); ok {
			return v
		}
		if a == "config" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return os.Getenv("WSBUS_CONFIG")
}

func applyFile(fs *flag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading config file: %w", err)
	}
	defer f.Close()
	return applyLines(fs, path, f)
}

func applyLines(fs *flag.FlagSet, path string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%s:%d: want `name = value`", path, n)
		}
		name = strings.TrimSpace(name)
		if fs.Lookup(name) == nil {
			return fmt.Errorf("%s:%d: unknown setting %q", path, n, name)
		}
		if err := fs.Set(name, strings.Trim(strings.TrimSpace(value), `"`)); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	return sc.Err()
}

// errUsage marks an error already explained by the flag package.
var errUsage = errors.New("usage")
