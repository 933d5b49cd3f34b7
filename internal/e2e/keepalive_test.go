package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbus/wsbus/internal/redistest"
)

// TestGatewaySocketsHaveNoKeepalive holds a WebSocket open to a gateway
// and reads the gateway's end of it from /proc/net/tcp: no keepalive
// timer. The WebSocket pings find dead peers; TCP keepalive would send a
// probe on every idle connection every 15 s, which at a million
// connections dropped loopback packets and aborted connections.
func TestGatewaySocketsHaveNoKeepalive(t *testing.T) {
	srv := redistest.Start(t)
	g := startGateway(t, srv.URL(), redistest.Prefix(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, _, err := ws.Dial(ctx, g.url+"?topic=keepalive")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, port, _ := net.SplitHostPort(g.addr)
	p, _ := strconv.Atoi(port)
	local := fmt.Sprintf(":%04X", p)
	remote := fmt.Sprintf(":%04X", c.LocalAddr().(*net.TCPAddr).Port)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	found := false
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasSuffix(fields[1], local) || !strings.HasSuffix(fields[2], remote) {
			continue
		}
		found = true
		timer, _, _ := strings.Cut(fields[5], ":")
		if timer == "02" {
			t.Errorf("the gateway's end of the connection has a keepalive timer: %s", sc.Text())
		}
	}
	if !found {
		t.Fatalf("no socket %s -> %s in /proc/net/tcp", local, remote)
	}
}
