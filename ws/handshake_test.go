package ws

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestHandshakeRefusals: each broken handshake gets its own HTTP status
// and reason, and a good one right after is upgraded.
func TestHandshakeRefusals(t *testing.T) {
	_, addr := startServer(t, &echoHandler{}, Config{})
	good := map[string]string{
		"Host":                  "x",
		"Upgrade":               "websocket",
		"Connection":            "keep-alive, Upgrade",
		"Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key":     "dGhlIHNhbXBsZSBub25jZQ==",
	}
	for _, tc := range []struct {
		name, line, drop, header, value string
		status                          int
		answer                          string // a header line the answer must have
	}{
		{name: "good", status: 101},
		{name: "lower-case names, LF only", line: "lf", status: 101},
		{name: "HTTP/1.0", line: "GET /ws HTTP/1.0", status: 505},
		{name: "no Host", drop: "Host", status: 400},
		{name: "no Upgrade", drop: "Upgrade", status: 400},
		{name: "Upgrade: h2c", header: "Upgrade", value: "h2c", status: 400},
		{name: "no Connection", drop: "Connection", status: 400},
		{name: "no key", drop: "Sec-WebSocket-Key", status: 400},
		{name: "short key", header: "Sec-WebSocket-Key", value: "c2hvcnQ=", status: 400},
		{name: "key not base64", header: "Sec-WebSocket-Key", value: "!!!!!!!!!!!!!!!!!!!!!!==", status: 400},
		{name: "no version", drop: "Sec-WebSocket-Version", status: 400},
		{name: "version 8", header: "Sec-WebSocket-Version", value: "8", status: 426, answer: "Sec-Websocket-Version: 13"},
		{name: "refused by Accept", line: "GET /ws?refuse HTTP/1.1", status: 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := "GET /ws?topic=a HTTP/1.1"
			if tc.line != "" && tc.line != "lf" {
				line = tc.line
			}
			var b strings.Builder
			b.WriteString(line + "\r\n")
			for _, k := range []string{"Host", "Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key"} {
				v := good[k]
				if k == tc.header {
					v = tc.value
				}
				if k == tc.drop {
					continue
				}
				if tc.line == "lf" {
					k = strings.ToLower(k)
				}
				b.WriteString(k + ": " + v + "\r\n")
			}
			b.WriteString("\r\n")
			req := b.String()
			if tc.line == "lf" {
				req = strings.ReplaceAll(req, "\r\n", "\n")
			}
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte(req))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == 101 && resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
				t.Fatalf("accept key %q, want RFC 6455's example answer", resp.Header.Get("Sec-WebSocket-Accept"))
			}
			if k, v, ok := strings.Cut(tc.answer, ": "); ok && resp.Header.Get(k) != v {
				t.Fatalf("answer header %s = %q, want %q", k, resp.Header.Get(k), v)
			}
		})
	}
}

// TestFrameBehindTheRequest: a frame sent in the same packet as the
// handshake is read, not lost.
func TestFrameBehindTheRequest(t *testing.T) {
	h := &echoHandler{}
	_, addr := startServer(t, h, Config{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := append(append([]byte(nil), upgradeRequest...), text("right behind")...)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if f := readServerFrame(t, conn, br); string(f.Payload) != "right behind" {
		t.Fatalf("echo %q, want the frame sent with the request", f.Payload)
	}
}

// FuzzParseHandshake: any request head is refused or parsed into views of
// itself with a 24-byte key.
func FuzzParseHandshake(f *testing.F) {
	f.Add(upgradeRequest)
	f.Add([]byte("GET / HTTP/1.1\nHost: x\nUpgrade: WebSocket\nConnection: upgrade\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\n\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n folded: x\r\n\r\n"))
	f.Add([]byte("GET  HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		var req Request
		key, err := parseHandshake(head, &req)
		if err != nil {
			if _, ok := err.(*handshakeError); !ok {
				t.Fatalf("error %T %v, want a handshakeError", err, err)
			}
			return
		}
		if len(key) != 24 || len(req.URI) == 0 {
			t.Fatalf("key %q, URI %q", key, req.URI)
		}
		for _, field := range [][]byte{key, req.URI, req.Host, req.Origin, req.Authorization} {
			if len(field) > 0 && !bytes.Contains(head, field) {
				t.Fatalf("field %q is not a view of the request", field)
			}
		}
		if resp := appendAccept(nil, key); !bytes.HasPrefix(resp, []byte("HTTP/1.1 101 ")) || !bytes.HasSuffix(resp, []byte("\r\n\r\n")) {
			t.Fatalf("answer %q", resp)
		}
	})
}

// BenchmarkUpgradeGobwas is the baseline of BenchmarkUpgrade: the same
// request answered by gobwas/ws's Upgrader.
func BenchmarkUpgradeGobwas(b *testing.B) {
	b.ReportAllocs()
	r := bytes.NewReader(nil)
	conn := &fuzzConn{r: r}
	u := ws.Upgrader{}
	for b.Loop() {
		r.Reset(upgradeRequest)
		if _, err := u.Upgrade(conn); err != nil {
			b.Fatal(err)
		}
	}
}
