package app

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/wsbus/wsbus/internal/redistest"
)

// TestPublishCommandErrors: wsbus publish says what rule an argument broke,
// in the command line's terms, on one line without internal prefixes.
func TestPublishCommandErrors(t *testing.T) {
	srv := redistest.Start(t)
	redisURL, prefix := srv.URL(), redistest.Prefix(t) // a bus never migrated
	tests := []struct {
		name string
		args []string
		want string // the whole of stderr
	}{
		{"deadline not whole milliseconds", []string{"publish", "--deadline", "1500us", "t", "1"},
			"wsbus publish: --deadline 1.5ms: want whole milliseconds from 1ms to 720h0m0s (30 days), such as 500ms or 30s\n"},
		{"deadline too long", []string{"publish", "--deadline", "721h", "t", "1"},
			"wsbus publish: --deadline 721h0m0s: want whole milliseconds from 1ms to 720h0m0s (30 days), such as 500ms or 30s\n"},
		{"bad topic", []string{"publish", "a b", "1"},
			`wsbus publish: topic "a b": want 1-256 bytes of UTF-8 without spaces or control characters` + "\n"},
		{"data too large", []string{"publish", "--max-data", "10", "t", "12345678901"},
			"wsbus publish: data is larger than 10 bytes (--max-data)\n"},
		{"data too large by default", []string{"publish", "t", strings.Repeat("x", 64<<10+1)},
			"wsbus publish: data is larger than 65536 bytes (--max-data)\n"},
		{"bus not migrated", []string{"publish", "t", "1"},
			"wsbus publish: bus not migrated (run wsbus migrate; gateways serving it write its meta back within a second of a Redis data loss)\n"},
		{"status of a bus not migrated", []string{"status"},
			"wsbus status: bus not migrated (run wsbus migrate; gateways serving it write its meta back within a second of a Redis data loss)\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append(tt.args[:1:1], append([]string{"--redis", redisURL, "--prefix", prefix}, tt.args[1:]...)...)
			if code := Main(args, &stdout, &stderr); code != 1 || stderr.String() != tt.want {
				t.Fatalf("exit %d, stderr %q; want exit 1, stderr %q", code, stderr.String(), tt.want)
			}
		})
	}
}

// TestUnreachableRedisIsOneLine: a one-shot command that cannot reach
// Redis prints its own error, once, and none of go-redis's retries (which
// go-redis writes to the process's stderr, hence a child process).
func TestUnreachableRedisIsOneLine(t *testing.T) {
	redisURL := "redis://127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)) + "/0"
	for _, args := range [][]string{
		{"status"},
		{"publish", "t", "1"},
		{"migrate"},
	} {
		t.Run(args[0], func(t *testing.T) {
			cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$", "--", args[0], "--redis", redisURL}, args[1:]...)...)
			cmd.Env = append(os.Environ(), "WSBUS_TEST_MAIN=1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 || len(lines) != 1 ||
				!strings.HasPrefix(lines[0], "wsbus "+args[0]+": ") || !strings.Contains(lines[0], "connection refused") {
				t.Fatalf("wsbus %s: %v, stderr:\n%s\nwant exit 1 and one line that says the connection was refused", args[0], err, stderr.String())
			}
		})
	}
}

func TestUserMessage(t *testing.T) {
	tests := []struct{ name, err, want string }{
		{"a sentinel", "streams: bus not migrated (run wsbus migrate; gateways serving it write its meta back within a second of a Redis data loss)", "bus not migrated (run wsbus migrate; gateways serving it write its meta back within a second of a Redis data loss)"},
		{"wrapped", "migrating the bus: migrations: bus schema is newer than this binary", "migrating the bus: bus schema is newer than this binary"},
		{"two deep", "--jwt-public-key k.pem: auth: parsing public key: x", "--jwt-public-key k.pem: parsing public key: x"},
		{"not a prefix", "topic \"bus: x\" is odd", "topic \"bus: x\" is odd"},
		{"go-redis keeps its own", "reading partition count: redis: connection pool timeout", "reading partition count: redis: connection pool timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := userMessage(errors.New(tt.err)); got != tt.want {
				t.Fatalf("userMessage(%q) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

// TestUsage: wsbus alone is a usage error (exit 2, the commands on
// stderr); --help is not (exit 0, stdout); a command's help lists its
// flags with the two dashes the README uses.
func TestUsage(t *testing.T) {
	var out, errs strings.Builder
	if code := Main(nil, &out, &errs); code != 2 || out.Len() != 0 || !strings.Contains(errs.String(), "wsbus serve") {
		t.Fatalf("wsbus = exit %d, stdout %q, stderr %q; want 2 and the usage on stderr", code, out.String(), errs.String())
	}
	out.Reset()
	errs.Reset()
	if code := Main([]string{"--help"}, &out, &errs); code != 0 || !strings.Contains(out.String(), "wsbus serve") {
		t.Fatalf("wsbus --help = exit %d, stdout %q; want 0 and the usage", code, out.String())
	}
	out.Reset()
	errs.Reset()
	if code := Main([]string{"serve", "--help"}, &out, &errs); code != 0 || errs.Len() != 0 {
		t.Fatalf("wsbus serve --help = exit %d, stderr %q; want 0 and the usage on stdout", code, errs.String())
	}
	help := out.String()
	for _, want := range []string{"\n  --redis URL\n", "\n  --insecure\n", "(default \"wsbus\")", "(default 65536)"} {
		if !strings.Contains(help, want) {
			t.Errorf("serve --help has no %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "\n  -r") || strings.Contains(help, "(default 0)") || strings.Contains(help, "(default false)") {
		t.Errorf("serve --help has a single-dash flag or a zero default:\n%s", help)
	}
	// After a mistake the usage goes to stderr, with the exit code 2,
	// after the mistake's flag named as the usage names it.
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"serve", "--no-such-flag"}, "flag provided but not defined: --no-such-flag\n"},
		{[]string{"serve", "-max-data=x"}, "invalid value \"x\" for flag --max-data: parse error\n"},
		{[]string{"status", "--json=maybe"}, "invalid boolean value \"maybe\" for --json: parse error\n"},
		{[]string{"tail", "--since"}, "flag needs an argument: --since\n"},
		{[]string{"publish", "t"}, ""},
		{[]string{"tail"}, ""},
	} {
		out.Reset()
		errs.Reset()
		code := Main(tt.args, &out, &errs)
		if code != 2 || out.Len() != 0 || !strings.HasPrefix(errs.String(), tt.msg+"Usage: wsbus "+tt.args[0]) {
			t.Errorf("wsbus %v = exit %d, stdout %q, stderr %q; want 2 and %q with the usage on stderr", tt.args, code, out.String(), errs.String(), tt.msg)
		}
	}
}

// TestFlagAfterArguments: a flag given after a command's arguments is
// refused with the reason, not taken for one more topic.
func TestFlagAfterArguments(t *testing.T) {
	for _, args := range [][]string{
		{"tail", "demo", "--since", "0"},
		{"tail", "demo", "-url=ws://127.0.0.1:1/v1/ws"},
		{"publish", "t", "1", "--deadline", "5s"},
	} {
		var out, errs strings.Builder
		code := Main(args, &out, &errs)
		want := "wsbus " + args[0] + ": " + args[2] + " comes after the arguments: flags go before them (wsbus " + args[0] + " --help)\n"
		if args[0] == "publish" {
			want = "wsbus publish: --deadline comes after the arguments: flags go before them (wsbus publish --help)\n"
		}
		if code != 1 || errs.String() != want {
			t.Errorf("wsbus %v = exit %d, %q; want 1, %q", args, code, errs.String(), want)
		}
	}
}
