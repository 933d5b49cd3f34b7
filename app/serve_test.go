package app

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/ws"
)

// TestServeReleasesItsPortOnError: a node that fails to start after it
// began listening (here ws.New refuses its configuration) closes its
// listener: the same port can be listened on again at once.
func TestServeReleasesItsPortOnError(t *testing.T) {
	srv := redistest.Start(t)
	addr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	c := testConfig(t, srv, redistest.Prefix(t), "--listen", addr)
	c.SlowConsumer = slowConsumer(ws.OverflowDrop + 1) // no policy: ws.New refuses it
	err := Serve(context.Background(), c, slog.New(slog.DiscardHandler), func(string) { t.Error("the node started") })
	if err == nil || !strings.Contains(err.Error(), "Overflow") {
		t.Fatalf("Serve = %v, want ws.New's refusal", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("after the failed start, listening on its port again: %v", err)
	}
	_ = ln.Close()
}
