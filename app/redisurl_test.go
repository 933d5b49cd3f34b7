package app

import (
	"context"
	"crypto/tls"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
	"github.com/wsbus/wsbus/streams"
)

// TestParseRedisURLs: every kind of --redis URL gives the client options it
// says, TLS and credentials included; what a URL holds that wsbus would
// not use is refused, never dropped.
func TestParseRedisURLs(t *testing.T) {
	type want struct {
		kind       string // single, cluster or failover
		addrs      []string
		tls        bool
		user, pass string
		master     string
		db         int
	}
	tests := []struct {
		name string
		urls []string
		want want
		err  string // in the error, when one is wanted
	}{
		{"default", nil, want{kind: "single", addrs: []string{"127.0.0.1:6379"}}, ""},
		{"one server", []string{"redis://u:p@h:7000/2"}, want{kind: "single", addrs: []string{"h:7000"}, user: "u", pass: "p", db: 2}, ""},
		{"one server with TLS", []string{"rediss://h:7000"}, want{kind: "single", addrs: []string{"h:7000"}, tls: true}, ""},
		{"cluster", []string{"redis+cluster://h1:7000,h2:7001"}, want{kind: "cluster", addrs: []string{"h1:7000", "h2:7001"}}, ""},
		{"cluster with credentials", []string{"redis+cluster://wsbus:s%40cret@h1:7000,h2:7001/"},
			want{kind: "cluster", addrs: []string{"h1:7000", "h2:7001"}, user: "wsbus", pass: "s@cret"}, ""},
		{"cluster with a password only", []string{"redis+cluster://:pw@h1:7000"},
			want{kind: "cluster", addrs: []string{"h1:7000"}, pass: "pw"}, ""},
		{"cluster with TLS", []string{"rediss+cluster://u:p@h1:7000,h2"},
			want{kind: "cluster", addrs: []string{"h1:7000", "h2:6379"}, tls: true, user: "u", pass: "p"}, ""},
		{"cluster of IPv6 nodes", []string{"redis+cluster://[::1]:7000,[::1]"},
			want{kind: "cluster", addrs: []string{"[::1]:7000", "[::1]:6379"}}, ""},
		{"cluster database 0", []string{"redis+cluster://h1:7000/0"}, want{kind: "cluster", addrs: []string{"h1:7000"}}, ""},
		{"cluster node by node", []string{"redis://u:p@h1:7000/0", "redis://u:p@h2:7001"},
			want{kind: "cluster", addrs: []string{"h1:7000", "h2:7001"}, user: "u", pass: "p"}, ""},
		{"cluster node by node with TLS", []string{"rediss://h1:7000", "rediss+cluster://h2:7001,h3:7002"},
			want{kind: "cluster", addrs: []string{"h1:7000", "h2:7001", "h3:7002"}, tls: true}, ""},
		{"sentinel", []string{"redis+sentinel://h1:26380,h2/mymaster"},
			want{kind: "failover", addrs: []string{"h1:26380", "h2:26379"}, master: "mymaster"}, ""},
		{"sentinel with credentials and a database", []string{"redis+sentinel://u:p@h1:26379/mymaster?db=3"},
			want{kind: "failover", addrs: []string{"h1:26379"}, user: "u", pass: "p", master: "mymaster", db: 3}, ""},
		{"sentinel with TLS", []string{"rediss+sentinel://h1:26379/m"},
			want{kind: "failover", addrs: []string{"h1:26379"}, tls: true, master: "m"}, ""},

		{"cluster database 1", []string{"redis+cluster://h1:7000/1"}, want{}, "only database 0"},
		{"cluster query", []string{"redis+cluster://h1:7000?read_only=true"}, want{}, "no query parameters"},
		{"cluster nodes that disagree on the password", []string{"redis://u:p@h1:7000", "redis://u:q@h2:7000"}, want{}, "must agree on TLS (rediss) and credentials"},
		{"cluster nodes that disagree on TLS", []string{"rediss://h1:7000", "redis://h2:7000"}, want{}, "must agree on TLS"},
		{"cluster with a bad port", []string{"redis+cluster://h1:x"}, want{}, "bad port"},
		{"cluster with an empty host", []string{"redis+cluster://h1:7000,,h2:7000"}, want{}, "empty host"},
		{"sentinel without a master", []string{"redis+sentinel://h1:26379"}, want{}, "master's name"},
		{"sentinel with an unknown parameter", []string{"redis+sentinel://h1:26379/m?dial_timeout=1"}, want{}, `unknown query parameter "dial_timeout"`},
		{"sentinel with a bad database", []string{"redis+sentinel://h1:26379/m?db=x"}, want{}, "not a database number"},
		{"sentinel among cluster nodes", []string{"redis://h2:7000", "redis+sentinel://h1:26379/m"}, want{}, "must be the only --redis"},
		{"unknown scheme", []string{"http://h1:7000", "redis://h2:7000"}, want{}, "unknown scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, err := parseRedis(tt.urls)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want one with %q", err, tt.err)
				}
				if strings.Contains(err.Error(), ":p@") || strings.Contains(err.Error(), ":q@") {
					t.Fatalf("error %q shows a password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got want
			var tlsConfig *tls.Config
			switch {
			case target.single != nil:
				o := target.single
				got = want{kind: "single", addrs: []string{o.Addr}, user: o.Username, pass: o.Password, db: o.DB}
				tlsConfig = o.TLSConfig
			case target.cluster != nil:
				o := target.cluster
				got = want{kind: "cluster", addrs: o.Addrs, user: o.Username, pass: o.Password}
				tlsConfig = o.TLSConfig
			case target.failover != nil:
				o := target.failover
				got = want{kind: "failover", addrs: o.SentinelAddrs, user: o.Username, pass: o.Password, master: o.MasterName, db: o.DB}
				tlsConfig = o.TLSConfig
				if o.SentinelUsername != "" || o.SentinelPassword != "" {
					t.Errorf("the data nodes' credentials were given to the Sentinels too")
				}
			}
			got.tls = tlsConfig != nil
			if tlsConfig != nil && (tlsConfig.MinVersion < tls.VersionTLS12 || tlsConfig.InsecureSkipVerify) {
				t.Errorf("TLS config %+v: want TLS 1.2 or later, certificates checked", tlsConfig)
			}
			if got.kind != tt.want.kind || !slices.Equal(got.addrs, tt.want.addrs) || got.tls != tt.want.tls ||
				got.user != tt.want.user || got.pass != tt.want.pass || got.master != tt.want.master || got.db != tt.want.db {
				t.Fatalf("options %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestClusterWithCredentials: a redis+cluster:// URL's user and password
// reach every node of a cluster that refuses clients without them (an ACL
// user; the default user is off).
func TestClusterWithCredentials(t *testing.T) {
	cl := redistest.StartClusterWith(t, 1, 1, redistest.Options{User: "wsbus", Password: "s3cret"})
	ctx := context.Background()
	stranger := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Masters[0].Addr}})
	defer stranger.Close()
	if err := stranger.Ping(ctx).Err(); err == nil {
		t.Fatal("the cluster answers a client without credentials: the test proves nothing")
	}
	var c common
	c.redis.values = []string{cl.URL()}
	if !strings.Contains(cl.URL(), "wsbus:s3cret@") {
		t.Fatalf("cluster URL %q carries no credentials", cl.URL())
	}
	rdb, err := c.client(0)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("client is a %T, want a cluster client", rdb)
	}
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the cluster URL: %v", err)
	}
	if v, err := rdb.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET = %q, %v", v, err)
	}
}

// TestServeThroughSentinel: a node given a redis+sentinel:// URL (with the
// master's password) finds the master through the Sentinels, migrates the
// bus there and delivers what a service publishes to it.
func TestServeThroughSentinel(t *testing.T) {
	st := redistest.StartSentinelWith(t, 1, 3, redistest.Options{Password: "s3cret"})
	prefix := redistest.Prefix(t)
	node := startNode(t, serveConfigURL(t, st.URL(), prefix, "--insecure"))
	master := st.Server(st.Master(t)).Client(t)
	keys := streams.Keys{Prefix: prefix}
	n, err := streams.Partitions(context.Background(), master, keys)
	if err != nil {
		t.Fatalf("the node did not migrate the bus on the master: %v", err)
	}
	c := wstest.Dial(t, node.url)
	c.Subscribe("sentinel", "", "")
	c.Expect("subscribed", testutil.Wait)
	id, err := master.XAdd(context.Background(), &redis.XAddArgs{
		Stream: keys.Ingress(streams.Partition("sentinel", n)),
		Values: []any{"topic", "sentinel", "data", `{"via":"sentinel"}`},
	}).Result()
	if err != nil {
		t.Fatalf("XADD on the master: %v", err)
	}
	if ev := c.Events(1, testutil.Wait)[0]; ev.ID != id || string(ev.Data) != `{"via":"sentinel"}` {
		t.Fatalf("event = %+v, want id %s", ev, id)
	}
}

// TestBadRedisURLIsRefused: serve stops at once on a --redis URL it cannot
// honour, saying why and without showing the password.
func TestBadRedisURLIsRefused(t *testing.T) {
	var c ServeConfig
	c.redis.values = []string{"redis+cluster://u:secret@h1:7000/3"}
	err := Serve(context.Background(), c, slog.New(slog.DiscardHandler), func(string) { t.Error("the node started") })
	if err == nil || !strings.Contains(err.Error(), "only database 0") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Serve = %v, want the URL refused without its password", err)
	}
}

// TestLeaseClientIsItsOwn: the lease client of each kind of --redis URL
// has its two connections, and its pipelines (the renewals) run on them,
// not on a pipeline pool of their own; the main client keeps go-redis's
// pipeline pool.
func TestLeaseClientIsItsOwn(t *testing.T) {
	for _, u := range []string{"redis://127.0.0.1:1/0", "redis+sentinel://127.0.0.1:1/wsbus", "redis+cluster://127.0.0.1:1"} {
		var c common
		c.redis.values = []string{u}
		leases, err := c.leaseClient()
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		main, err := c.client(64)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		pool := func(rdb redis.UniversalClient) (size, pipelines int) {
			switch r := rdb.(type) {
			case *redis.Client:
				return r.Options().PoolSize, r.Options().PipelinePoolSize
			case *redis.ClusterClient:
				return r.Options().PoolSize, r.Options().PipelinePoolSize
			}
			t.Fatalf("%s: a %T", u, rdb)
			return 0, 0
		}
		if size, pipelines := pool(leases); size != 2 || pipelines != -1 {
			t.Errorf("%s: the lease client's pool %d, pipeline pool %d; want 2 and none (-1)", u, size, pipelines)
		}
		if size, pipelines := pool(main); size != 64 || pipelines < 0 {
			t.Errorf("%s: the main client's pool %d, pipeline pool %d; want 64 and go-redis's", u, size, pipelines)
		}
		_, _ = leases.Close(), main.Close()
	}
}
