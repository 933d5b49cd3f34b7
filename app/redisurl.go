package app

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The --redis URLs, one of:
//
//	redis://[user:pass@]host:port[/db]                     one server; rediss:// for TLS (go-redis's ParseURL, with its query options)
//	redis+cluster://[user:pass@]h1:p1,h2:p2                Redis Cluster; rediss+cluster:// for TLS
//	redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER[?db=N] the master MASTER that the Sentinels h1, h2... watch; rediss+sentinel:// for TLS
//
// Several --redis URLs are the seed nodes of one Redis Cluster (each
// redis://, rediss:// or redis+cluster://), which must agree on TLS and
// credentials. A cluster or sentinel URL's user and password are the data
// nodes' (AUTH on every master and replica; Sentinels are asked without
// one); with TLS every node's certificate is checked against the address
// it is reached at (for a cluster, as the cluster announces it). Anything
// a cluster or sentinel URL holds that wsbus would not use (a database on a
// cluster, an unknown query parameter) is refused, never dropped.
const (
	defaultRedisURL = "redis://127.0.0.1:6379/0"
	redisPort       = "6379"
	sentinelPort    = "26379"
)

// redisTarget is what the --redis URLs describe: exactly one field is set.
type redisTarget struct {
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// parseRedis reads the --redis URLs (see defaultRedisURL).
func parseRedis(urls []string) (redisTarget, error) {
	if len(urls) == 0 {
		urls = []string{defaultRedisURL}
	}
	scheme, _, _ := strings.Cut(urls[0], "://")
	switch {
	case len(urls) == 1 && (scheme == "redis+sentinel" || scheme == "rediss+sentinel"):
		opt, err := parseSentinelURL(urls[0])
		if err != nil {
			return redisTarget{}, fmt.Errorf("parsing --redis %q: %w", redact(urls[0]), err)
		}
		return redisTarget{failover: opt}, nil
	case len(urls) == 1 && scheme != "redis+cluster" && scheme != "rediss+cluster":
		opt, err := redis.ParseURL(urls[0])
		if err != nil {
			return redisTarget{}, fmt.Errorf("parsing --redis %q: %w", redact(urls[0]), err)
		}
		return redisTarget{single: opt}, nil
	}
	opt, err := parseClusterURLs(urls)
	if err != nil {
		return redisTarget{}, err
	}
	return redisTarget{cluster: opt}, nil
}

// parseClusterURLs reads the seed nodes of a Redis Cluster.
func parseClusterURLs(urls []string) (*redis.ClusterOptions, error) {
	opt := &redis.ClusterOptions{}
	var first *multiHostURL
	for _, raw := range urls {
		u, err := parseMultiHostURL(raw, "+cluster", redisPort)
		if err == nil {
			err = u.checkCluster()
		}
		if err != nil {
			return nil, fmt.Errorf("parsing --redis %q: %w", redact(raw), err)
		}
		if first == nil {
			first = u
			opt.Username, opt.Password = u.username, u.password
			if u.tls {
				opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
		} else if u.tls != first.tls || u.username != first.username || u.password != first.password {
			return nil, fmt.Errorf("--redis %q and %q: the URLs of one Redis Cluster must agree on TLS (rediss) and credentials", redact(urls[0]), redact(raw))
		}
		opt.Addrs = append(opt.Addrs, u.hosts...)
	}
	return opt, nil
}

// parseSentinelURL reads a redis+sentinel:// URL.
func parseSentinelURL(raw string) (*redis.FailoverOptions, error) {
	u, err := parseMultiHostURL(raw, "+sentinel", sentinelPort)
	if err != nil {
		return nil, err
	}
	master := strings.Trim(u.path, "/")
	if master == "" || strings.Contains(master, "/") {
		return nil, errors.New("want the master's name as the path: redis+sentinel://h1:p1,h2:p2/MASTER")
	}
	opt := &redis.FailoverOptions{
		MasterName:    master,
		SentinelAddrs: u.hosts,
		Username:      u.username,
		Password:      u.password,
	}
	if u.tls {
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	for key, values := range u.query {
		if key != "db" {
			return nil, fmt.Errorf("unknown query parameter %q (a sentinel URL takes db)", key)
		}
		if opt.DB, err = strconv.Atoi(values[len(values)-1]); err != nil || opt.DB < 0 {
			return nil, fmt.Errorf("db=%q is not a database number", values[len(values)-1])
		}
	}
	return opt, nil
}

// multiHostURL is a URL whose host is a comma-separated list, which
// net/url refuses for IPv6 addresses and does not split.
type multiHostURL struct {
	tls                bool     // the scheme begins with rediss
	hosts              []string // host:port, the default port filled in
	username, password string
	path               string
	query              url.Values
}

// parseMultiHostURL reads scheme://[user:pass@]h1[:p1],h2[:p2][/path][?query]
// for a scheme of redis or rediss with kind ("+cluster", "+sentinel")
// after it; a cluster's node may also be a plain redis:// or rediss:// URL.
// A host without a port gets defaultPort.
func parseMultiHostURL(raw, kind, defaultPort string) (*multiHostURL, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("not a URL")
	}
	base, suffix, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" || "+"+suffix != kind && !(suffix == "" && kind == "+cluster") {
		if suffix == "sentinel" {
			return nil, errors.New("a redis+sentinel URL must be the only --redis")
		}
		return nil, fmt.Errorf("unknown scheme %q", scheme)
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	// The hosts are parsed here; net/url parses the rest with a stand-in
	// host, unescaping the user information, path and query.
	userinfo, hostList := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hostList = authority[:i+1], authority[i+1:]
	}
	u, err := url.Parse("redis://" + userinfo + "host" + tail)
	if err != nil {
		return nil, err
	}
	m := &multiHostURL{tls: base == "rediss", path: u.Path, query: u.Query()}
	if u.User != nil {
		m.username = u.User.Username()
		m.password, _ = u.User.Password()
	}
	for _, h := range strings.Split(hostList, ",") {
		hp, err := hostPort(h, defaultPort)
		if err != nil {
			return nil, err
		}
		m.hosts = append(m.hosts, hp)
	}
	return m, nil
}

// hostPort checks one host of a list and gives it defaultPort when it has
// none.
func hostPort(h, defaultPort string) (string, error) {
	if h == "" {
		return "", errors.New("an empty host in the list")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: a name, an IPv4 address or an IPv6 one, bracketed or not.
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), defaultPort
		if strings.Contains(host, ":") && net.ParseIP(host) == nil {
			return "", fmt.Errorf("host %q: %w", h, err)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("host %q: bad port", h)
	}
	if host == "" {
		return "", fmt.Errorf("host %q: no host name", h)
	}
	return net.JoinHostPort(host, port), nil
}

// checkCluster refuses what a cluster URL must not hold: Redis Cluster has
// only database 0, and wsbus sets a cluster client's options itself.
func (m *multiHostURL) checkCluster() error {
	if db := strings.Trim(m.path, "/"); db != "" && db != "0" {
		return fmt.Errorf("database %q: Redis Cluster has only database 0", db)
	}
	if len(m.query) > 0 {
		return errors.New("a cluster URL takes no query parameters")
	}
	return nil
}

// redact hides the password of a URL for an error message.
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(authority[:at], ":")
	if !hasPassword {
		return raw
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}
