package app

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "wsbus.conf")
	err := os.WriteFile(file, []byte("# a comment\nprefix = fromfile\nlisten = 127.0.0.1:1\nnode-id = \"file-node\"\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("WSBUS_LISTEN", "127.0.0.1:2")
	t.Setenv("WSBUS_NODE_ID", "env-node")
	var c ServeConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.register(fs)
	if err := parse(fs, []string{"--config", file, "--node-id", "flag-node"}); err != nil {
		t.Fatal(err)
	}
	if c.prefix != "fromfile" || c.Listen != "127.0.0.1:2" || c.NodeID != "flag-node" {
		t.Fatalf("prefix %q listen %q node %q: want file < environment < command line", c.prefix, c.Listen, c.NodeID)
	}
}

func TestConfigFileErrors(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"unknown setting", "colour = blue\n", "unknown setting"},
		{"no equals sign", "prefix\n", "want `name = value`"},
		{"bad value", "max-queue = lots\n", "parse error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c ServeConfig
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			c.register(fs)
			err := applyLines(fs, "x.conf", strings.NewReader(tt.content))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "x.conf:1") {
				t.Fatalf("error = %v, want one naming x.conf:1 and %q", err, tt.want)
			}
		})
	}
}

func TestMainCommandLine(t *testing.T) {
	tests := []struct {
		name     string
		env      string // WSBUS_MAX_QUEUE, when set
		slow     string // WSBUS_SLOW_CONSUMER, when set
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{"usage", "", "", nil, 0, "wsbus serve", ""},
		{"help", "", "", []string{"--help"}, 0, "WSBUS_", ""},
		{"unknown command", "", "", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"serve help", "", "", []string{"serve", "--help"}, 0, "", "-insecure"},
		{"serve without auth", "", "", []string{"serve"}, 1, "", "--insecure for development"},
		{"serve with a secret and a key", "", "", []string{"serve", "--jwt-secret", "s", "--jwt-public-key", "k.pem"}, 1, "", "not both"},
		{"serve with a missing key file", "", "", []string{"serve", "--jwt-public-key", "/nonexistent.pem"}, 1, "", "reading --jwt-public-key"},
		{"serve with a bad flag", "", "", []string{"serve", "--nope"}, 2, "", "flag provided but not defined"},
		{"publish without arguments", "", "", []string{"publish"}, 2, "", "TOPIC DATA"},
		{"tail without topics", "", "", []string{"tail"}, 2, "", "TOPIC..."},
		{"migrate help", "", "", []string{"migrate", "-h"}, 0, "", "-partitions"},
		{"bad environment value", "lots", "", []string{"serve"}, 1, "", "WSBUS_MAX_QUEUE"},
		{"bad slow-consumer", "", "", []string{"serve", "--insecure", "--slow-consumer", "drop"}, 2, "", `invalid value "drop" for flag -slow-consumer: "drop" is neither lag nor close`},
		{"bad slow-consumer environment", "", "drop", []string{"serve", "--insecure"}, 1, "", `environment WSBUS_SLOW_CONSUMER: "drop" is neither lag nor close`},
		{"slow-consumer help", "", "", []string{"serve", "--help"}, 0, "", "-slow-consumer mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("WSBUS_MAX_QUEUE", tt.env)
			}
			if tt.slow != "" {
				t.Setenv("WSBUS_SLOW_CONSUMER", tt.slow)
			}
			var stdout, stderr bytes.Buffer
			code := Main(tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.inStdout) || !strings.Contains(stderr.String(), tt.inStderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d with %q / %q", code, stdout.String(), stderr.String(), tt.code, tt.inStdout, tt.inStderr)
			}
		})
	}
}

// TestRedisLoggerIsDebug: go-redis's own messages reach the node's log only
// at debug level, marked as go-redis's.
func TestRedisLoggerIsDebug(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  bool
	}{{slog.LevelDebug, true}, {slog.LevelInfo, false}} {
		var buf bytes.Buffer
		r := redisLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level}))}
		r.Printf(context.Background(), "redis: %s: failed to dial\n", "pool.go:770")
		got := buf.String()
		if has := strings.Contains(got, `msg="redis: pool.go:770: failed to dial"`) && strings.Contains(got, "from=go-redis"); has != tc.want {
			t.Errorf("at level %v the log holds %q", tc.level, got)
		}
	}
}
