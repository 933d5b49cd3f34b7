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

// TestConfigPrecedence: the command line wins over the environment, which
// wins over the --config file, for plain and list flags alike; a source
// that gives a list flag replaces the lower sources' values entirely, and
// values within one source accumulate.
func TestConfigPrecedence(t *testing.T) {
	const (
		fileRedis = "redis://127.0.0.1:6391/1"
		envRedis  = "redis://127.0.0.1:6392/2"
	)
	file := "# a comment\nprefix = fromfile\nlisten = 127.0.0.1:1\nnode-id = \"file-node\"\n" +
		"redis = " + fileRedis + "\nallowed-origins = https://f1.example\nallowed-origins = https://f2.example\n"
	env := map[string]string{
		"WSBUS_LISTEN":          "127.0.0.1:2",
		"WSBUS_REDIS":           envRedis,
		"WSBUS_ALLOWED_ORIGINS": "https://e1.example,https://e2.example",
	}
	tests := []struct {
		name string
		file bool
		env  bool
		args []string
		want map[string]string // flag name: its value, lists comma-joined
	}{
		{"defaults", false, false, nil, map[string]string{
			"prefix": "wsbus", "listen": "127.0.0.1:8080", "redis": "", "allowed-origins": "",
		}},
		{"file", true, false, nil, map[string]string{
			"prefix": "fromfile", "listen": "127.0.0.1:1", "node-id": "file-node",
			"redis": fileRedis, "allowed-origins": "https://f1.example,https://f2.example",
		}},
		{"environment over file", true, true, nil, map[string]string{
			"prefix": "fromfile", "listen": "127.0.0.1:2", "node-id": "file-node",
			"redis": envRedis, "allowed-origins": "https://e1.example,https://e2.example",
		}},
		{"command line over environment and file", true, true,
			[]string{"--listen", "127.0.0.1:3", "--redis", "redis://127.0.0.1:6393/3", "--allowed-origins", "https://c.example"},
			map[string]string{
				"prefix": "fromfile", "listen": "127.0.0.1:3", "node-id": "file-node",
				"redis": "redis://127.0.0.1:6393/3", "allowed-origins": "https://c.example",
			}},
		{"command line over environment", false, true,
			[]string{"--redis", envRedis, "--allowed-origins", "https://c.example"},
			map[string]string{"listen": "127.0.0.1:2", "redis": envRedis, "allowed-origins": "https://c.example"}},
		{"command line over file", true, false,
			[]string{"--redis", "redis://127.0.0.1:6393/3", "--node-id", "flag-node"},
			map[string]string{
				"listen": "127.0.0.1:1", "node-id": "flag-node",
				"redis": "redis://127.0.0.1:6393/3", "allowed-origins": "https://f1.example,https://f2.example",
			}},
		{"several values on the command line", true, true,
			[]string{"--redis", "redis://127.0.0.1:7001", "--redis", "redis://127.0.0.1:7002", "--allowed-origins", "https://c1.example", "--allowed-origins", "https://c2.example"},
			map[string]string{
				"redis": "redis://127.0.0.1:7001,redis://127.0.0.1:7002", "allowed-origins": "https://c1.example,https://c2.example",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range []string{"WSBUS_CONFIG", "WSBUS_LISTEN", "WSBUS_REDIS", "WSBUS_ALLOWED_ORIGINS", "WSBUS_PREFIX", "WSBUS_NODE_ID"} {
				t.Setenv(name, "") // restored after the test
				os.Unsetenv(name)
			}
			if tt.env {
				for k, v := range env {
					t.Setenv(k, v)
				}
			}
			args := tt.args
			if tt.file {
				path := filepath.Join(t.TempDir(), "wsbus.conf")
				if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{"--config", path}, args...)
			}
			var c ServeConfig
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			c.register(fs)
			if err := parse(fs, args); err != nil {
				t.Fatal(err)
			}
			for name, want := range tt.want {
				if got := fs.Lookup(name).Value.String(); got != want {
					t.Errorf("--%s = %q, want %q", name, got, want)
				}
			}
		})
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
		{"usage", "", "", nil, 2, "", "wsbus serve"},
		{"help", "", "", []string{"--help"}, 0, "WSBUS_", ""},
		{"unknown command", "", "", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"serve help", "", "", []string{"serve", "--help"}, 0, "\n  --insecure\n", ""},
		{"help despite a bad environment", "lots", "", []string{"serve", "--listen", "127.0.0.1:0", "--insecure", "-h"}, 0, "\n  --max-queue int\n", ""},
		{"a bad environment, a help that is a flag's value", "lots", "", []string{"serve", "--listen", "--help"}, 1, "", "WSBUS_MAX_QUEUE"},
		{"serve without auth", "", "", []string{"serve"}, 1, "", "--insecure for development"},
		{"serve with a secret and a key", "", "", []string{"serve", "--jwt-secret", "s", "--jwt-public-key", "k.pem"}, 1, "", "not both"},
		{"serve with a missing key file", "", "", []string{"serve", "--jwt-public-key", "/nonexistent.pem"}, 1, "", "reading --jwt-public-key"},
		{"serve with a bad flag", "", "", []string{"serve", "--nope"}, 2, "", "flag provided but not defined"},
		{"publish without arguments", "", "", []string{"publish"}, 2, "", "TOPIC DATA"},
		{"tail without topics", "", "", []string{"tail"}, 2, "", "TOPIC..."},
		{"migrate help", "", "", []string{"migrate", "-h"}, 0, "\n  --partitions int\n", ""},
		{"bad environment value", "lots", "", []string{"serve"}, 1, "", "WSBUS_MAX_QUEUE"},
		{"bad slow-consumer", "", "", []string{"serve", "--insecure", "--slow-consumer", "drop"}, 2, "", `invalid value "drop" for flag --slow-consumer: "drop" is neither lag nor close`},
		{"bad slow-consumer environment", "", "drop", []string{"serve", "--insecure"}, 1, "", `environment WSBUS_SLOW_CONSUMER: "drop" is neither lag nor close`},
		{"slow-consumer help", "", "", []string{"serve", "--help"}, 0, "\n  --slow-consumer mode\n", ""},
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
