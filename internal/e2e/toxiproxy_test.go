package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
)

// toxiproxyVersion is the toxiproxy the fault tests are written against:
// `go tool task toxiproxy` installs it as bin/toxiproxy-server.
const toxiproxyVersion = "v2.12.0"

// toxiproxyBin finds toxiproxy-server: $TOXIPROXY_SERVER, else where `go
// tool task toxiproxy` puts it, else on PATH. It fails the test when there
// is none: the fault tests never skip.
func toxiproxyBin(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("TOXIPROXY_SERVER"); p != "" {
		if _, err := os.Stat(p); err != nil {
			tb.Fatalf("TOXIPROXY_SERVER=%s: %v", p, err)
		}
		return p
	}
	if p, err := filepath.Abs("../../bin/toxiproxy-server"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("toxiproxy-server"); err == nil {
		return p
	}
	tb.Fatalf("toxiproxy-server not found: install it with `go tool task toxiproxy` (go install github.com/Shopify/toxiproxy/v2/cmd/server@%s, renamed bin/toxiproxy-server), or set TOXIPROXY_SERVER to its path", toxiproxyVersion)
	return ""
}

// toxiproxy is a running toxiproxy-server, driven through its HTTP API.
type toxiproxy struct {
	tb  testing.TB
	api string // http://127.0.0.1:port
	log *syncBuffer
}

// startToxiproxy runs toxiproxy-server on a free port until the test ends.
func startToxiproxy(tb testing.TB) *toxiproxy {
	tb.Helper()
	port := redistest.FreePort(tb)
	cmd := exec.Command(toxiproxyBin(tb), "-host", "127.0.0.1", "-port", strconv.Itoa(port))
	tp := &toxiproxy{tb: tb, api: "http://127.0.0.1:" + strconv.Itoa(port), log: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = tp.log, tp.log
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting toxiproxy-server: %v", err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("toxiproxy-server log (last lines):\n%s", lastLines(tp.log.String(), 60))
		}
	})
	testutil.Eventually(tb, 10*time.Second, func() error {
		return tp.call("GET", "/version", nil, nil)
	})
	return tp
}

// proxy is one toxiproxy proxy: a listener that forwards to upstream.
type proxy struct {
	tp   *toxiproxy
	name string
	addr string // where it listens
}

// proxy creates a proxy to upstream (host:port) on a free port.
func (tp *toxiproxy) proxy(name, upstream string) *proxy {
	tp.tb.Helper()
	var out struct{ Listen string }
	body := map[string]any{"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true}
	if err := tp.call("POST", "/proxies", body, &out); err != nil {
		tp.tb.Fatalf("creating proxy %s: %v", name, err)
	}
	return &proxy{tp: tp, name: name, addr: out.Listen}
}

// url is the redis:// URL of the Redis behind the proxy.
func (p *proxy) url() string { return "redis://" + p.addr + "/0" }

// toxic adds a toxic to the proxy's stream ("upstream": gateway to Redis,
// "downstream": Redis to gateway), for every connection. Its name is the
// type and the stream, which remove takes.
func (p *proxy) toxic(typ, stream string, attributes map[string]int) {
	p.tp.tb.Helper()
	body := map[string]any{"name": typ + "-" + stream, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attributes}
	if err := p.tp.call("POST", "/proxies/"+p.name+"/toxics", body, nil); err != nil {
		p.tp.tb.Fatalf("adding %s toxic to %s %s: %v", typ, p.name, stream, err)
	}
}

// remove takes a toxic away.
func (p *proxy) remove(typ, stream string) {
	p.tp.tb.Helper()
	if err := p.tp.call("DELETE", "/proxies/"+p.name+"/toxics/"+typ+"-"+stream, nil, nil); err != nil {
		p.tp.tb.Fatalf("removing %s toxic from %s %s: %v", typ, p.name, stream, err)
	}
}

// enable opens (true) or cuts (false) the proxy: cut, it closes every
// connection and refuses new ones, as a network partition seen by the
// gateway would.
func (p *proxy) enable(on bool) {
	p.tp.tb.Helper()
	if err := p.tp.call("PATCH", "/proxies/"+p.name, map[string]any{"enabled": on}, nil); err != nil {
		p.tp.tb.Fatalf("setting %s enabled=%v: %v", p.name, on, err)
	}
}

// call sends one API request with body as JSON and decodes the answer
// into out.
func (tp *toxiproxy) call(method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, tp.api+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
