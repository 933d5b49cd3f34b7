package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gws "github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbus/wsbus/internal/authtest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/internal/wstest"
)

const testSecret = "test-secret"

func claims(sub string, ttl time.Duration, topics ...string) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix(), "aud": "wsbus", "topics": topics}
}

func hs(tb testing.TB, c jwt.MapClaims) string {
	return authtest.Sign(tb, jwt.SigningMethodHS256, []byte(testSecret), c)
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// dialStatus returns the HTTP status a refused handshake got, or 101.
func dialStatus(tb testing.TB, url string, h http.Header) int {
	tb.Helper()
	c, err := wstest.DialHeader(url, h)
	var se gws.StatusError
	switch {
	case err == nil:
		_ = c.Conn.Close()
		return http.StatusSwitchingProtocols
	case errors.As(err, &se):
		return int(se)
	}
	tb.Fatalf("dial: %v", err)
	return 0
}

func writePEM(tb testing.TB, pub any) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func securedBus(tb testing.TB, args ...string) *testBus {
	tb.Helper()
	return startBus(tb, args...)
}

func TestAuthTokens(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hsBus := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus")
	rsBus := securedBus(t, "--jwt-public-key", writePEM(t, &rsaKey.PublicKey))
	esBus := securedBus(t, "--jwt-public-key", writePEM(t, &ecKey.PublicKey))
	good := claims("u1", time.Hour, "user:1")
	rsaPEM, _ := os.ReadFile(writePEM(t, &rsaKey.PublicKey))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	noExp := claims("u1", time.Hour, "user:1")
	delete(noExp, "exp")
	wrongAud := claims("u1", time.Hour, "user:1")
	wrongAud["aud"] = "other"
	tests := []struct {
		name   string
		b      *testBus
		header http.Header
		query  string
		status int
	}{
		{"HS256 in the header", hsBus, bearer(hs(t, good)), "", 101},
		{"HS256 in the query", hsBus, nil, "?token=" + hs(t, good), 101},
		{"RS256", rsBus, bearer(authtest.Sign(t, jwt.SigningMethodRS256, rsaKey, good)), "", 101},
		{"ES256", esBus, bearer(authtest.Sign(t, jwt.SigningMethodES256, ecKey, good)), "", 101},
		{"no token", hsBus, nil, "", 401},
		{"alg none", hsBus, bearer(none), "", 401},
		{"alg none to RS256", rsBus, bearer(none), "", 401},
		{"HS256 signed with the RSA public key", rsBus, bearer(authtest.Sign(t, jwt.SigningMethodHS256, rsaPEM, good)), "", 401},
		{"expired", hsBus, bearer(hs(t, claims("u1", -time.Minute, "user:1"))), "", 401},
		{"missing exp", hsBus, bearer(hs(t, noExp)), "", 401},
		{"wrong aud", hsBus, bearer(hs(t, wrongAud)), "", 401},
		{"bad signature", hsBus, bearer(authtest.Sign(t, jwt.SigningMethodHS256, []byte("nope"), good)), "", 401},
		{"not a JWT", hsBus, bearer("garbage"), "", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dialStatus(t, tt.b.node.url+tt.query, tt.header); got != tt.status {
				t.Fatalf("handshake status %d, want %d", got, tt.status)
			}
		})
	}
}

func TestAuthTopicsAndRefresh(t *testing.T) {
	b := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus")
	c, err := wstest.DialHeader(b.node.url, bearer(hs(t, claims("u1", time.Hour, "user:1", "news:*"))))
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(t)
	for topic, want := range map[string]string{"user:1": "subscribed", "news:sport": "subscribed", "user:2": "error", "news": "error"} {
		c.Subscribe(topic, "", "")
		m := c.Next(testutil.Wait)
		if m.Type != want || want == "error" && m.Code != "forbidden" {
			t.Fatalf("subscribe %s = %+v, want %s", topic, m, want)
		}
	}
	// The single-topic URL form is checked too.
	q, err := wstest.DialHeader(b.node.url+"?topic=user:2", bearer(hs(t, claims("u1", time.Hour, "user:1"))))
	if err != nil {
		t.Fatal(err)
	}
	if m := q.Attach(t).Next(testutil.Wait); m.Code != "forbidden" {
		t.Fatalf("single-topic subscribe outside the token = %+v, want forbidden", m)
	}

	t.Run("expiry closes with 4003", func(t *testing.T) {
		c, err := wstest.DialHeader(b.node.url, bearer(hs(t, claims("u2", 2*time.Second, "user:2"))))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if code := c.Attach(t).CloseCode(5 * time.Second); code != 4003 {
			t.Fatalf("close code %d, want 4003", code)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("closed %v after connecting, want at the token's expiry (about 1-2s)", d)
		}
	})
	t.Run("refresh extends the connection", func(t *testing.T) {
		c, err := wstest.DialHeader(b.node.url, bearer(hs(t, claims("u3", 2*time.Second, "a", "b"))))
		if err != nil {
			t.Fatal(err)
		}
		c.Attach(t)
		c.Subscribe("a", "", "")
		c.Subscribe("b", "", "")
		c.Expect("subscribed", testutil.Wait)
		c.Expect("subscribed", testutil.Wait)
		c.Send(map[string]string{"type": "refresh", "token": hs(t, claims("other", time.Hour, "a"))})
		if m := c.Next(testutil.Wait); m.Code != "unauthorized" {
			t.Fatalf("refresh for another subject = %+v, want unauthorized", m)
		}
		c.Send(map[string]string{"type": "refresh", "token": "garbage"})
		if m := c.Next(testutil.Wait); m.Code != "unauthorized" {
			t.Fatalf("refresh with garbage = %+v, want unauthorized", m)
		}
		c.Send(map[string]string{"type": "refresh", "token": hs(t, claims("u3", time.Hour, "a"))})
		if m := c.Next(testutil.Wait); m.Type != "error" || m.Code != "forbidden" || m.Topic != "b" {
			t.Fatalf("refresh without topic b = %+v, want b dropped as forbidden", m)
		}
		c.Expect("refreshed", testutil.Wait)
		time.Sleep(2500 * time.Millisecond) // under test: the connection outlives the first token's expiry
		c.Send(map[string]string{"type": "ping"})
		c.Expect("pong", testutil.Wait)
	})
}

func TestOrigins(t *testing.T) {
	tok := hs(t, claims("u", time.Hour, "*"))
	listed := securedBus(t, "--jwt-secret", testSecret, "--allowed-origins", "https://good.example,https://also.example")
	sameHost := securedBus(t, "--jwt-secret", testSecret)
	open := newTestBus(t)
	origin := func(o string) http.Header {
		h := bearer(tok)
		if o != "" {
			h.Set("Origin", o)
		}
		return h
	}
	tests := []struct {
		name   string
		url    string
		origin string
		status int
	}{
		{"listed", listed.node.url, "https://good.example", 101},
		{"second listed", listed.node.url, "https://also.example", 101},
		{"not listed", listed.node.url, "https://evil.example", 403},
		{"no Origin (not a browser)", listed.node.url, "", 101},
		{"same host by default", sameHost.node.url, "http://" + sameHost.node.addr, 101},
		{"other host by default", sameHost.node.url, "https://evil.example", 403},
		{"insecure allows any", open.node.url, "https://evil.example", 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dialStatus(t, tt.url, origin(tt.origin)); got != tt.status {
				t.Fatalf("status %d, want %d", got, tt.status)
			}
		})
	}
}

func TestPublishKeyAndHistoryAuth(t *testing.T) {
	closed := securedBus(t, "--jwt-secret", testSecret)
	keyed := securedBus(t, "--jwt-secret", testSecret, "--publish-key", "pk")
	body := `{"topic":"t","data":1}`
	req := func(method, url, auth, body string) int {
		r, _ := http.NewRequest(method, url, strings.NewReader(body))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		resp, err := httpClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tok := hs(t, claims("u", time.Hour, "t"))
	for _, tt := range []struct {
		name, method, url, auth, body string
		status                        int
	}{
		{"publish without a configured key", "POST", "http://" + closed.node.addr + "/v1/publish", "", body, 403},
		{"publish without the key", "POST", "http://" + keyed.node.addr + "/v1/publish", "", body, 401},
		{"publish with a wrong key", "POST", "http://" + keyed.node.addr + "/v1/publish", "Bearer nope", body, 401},
		{"publish with the key", "POST", "http://" + keyed.node.addr + "/v1/publish", "Bearer pk", body, 200},
		{"unread without a configured key", "GET", "http://" + closed.node.addr + "/v1/unread?topic=t&sub=u", "", "", 403},
		{"unread without the key", "GET", "http://" + keyed.node.addr + "/v1/unread?topic=t&sub=u", "", "", 401},
		{"unread with a client token", "GET", "http://" + keyed.node.addr + "/v1/unread?topic=t&sub=u", "Bearer " + tok, "", 401},
		{"unread with the key", "GET", "http://" + keyed.node.addr + "/v1/unread?topic=t&sub=u", "Bearer pk", "", 200},
		{"history without a token", "GET", "http://" + keyed.node.addr + "/v1/history?topic=t", "", "", 401},
		{"history of a forbidden topic", "GET", "http://" + keyed.node.addr + "/v1/history?topic=x", "Bearer " + tok, "", 403},
		{"history with a token", "GET", "http://" + keyed.node.addr + "/v1/history?topic=t", "Bearer " + tok, "", 200},
		{"demo page is off with auth", "GET", "http://" + keyed.node.addr + "/", "", "", 404},
		{"demo client script is off with auth", "GET", "http://" + keyed.node.addr + "/wsbus-client.js", "", "", 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := req(tt.method, tt.url, tt.auth, tt.body); got != tt.status {
				t.Fatalf("%s %s = %d, want %d", tt.method, tt.url, got, tt.status)
			}
		})
	}
}

// TestTailWithToken runs `wsbus tail --token` against a gateway with
// authentication.
func TestTailWithToken(t *testing.T) {
	b := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus")
	var out, logs strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"tail", "--url", b.node.url, "--count", "1", "--since", "0",
			"--token", hs(t, claims("u", time.Hour, "alerts")), "alerts"}, &out, &logs)
	}()
	id := b.XAdd(t, "alerts", `{"level":"high"}`)
	select {
	case code := <-done:
		if code != 0 || out.String() != "alerts "+id+` {"level":"high"}`+"\n" {
			t.Fatalf("tail exited %d, printed %q, logged %q", code, out.String(), logs.String())
		}
	case <-time.After(testutil.Wait):
		t.Fatalf("tail printed nothing; it logged %q", logs.String())
	}
}

// TestTailGivesUp: wsbus tail exits 1 with the reason on what retrying
// cannot mend, instead of reconnecting forever.
func TestTailGivesUp(t *testing.T) {
	secured := securedBus(t, "--jwt-secret", testSecret, "--jwt-audience", "wsbus")
	open := newTestBus(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no token for a gateway with auth", []string{"--url", secured.node.url, "alerts"}, "HTTP 401"},
		{"a topic the gateway refuses", []string{"--url", open.node.url, "a b"}, "bad_topic"},
		{"ack without a subject", []string{"--url", open.node.url, "--ack", "alerts"}, "need a subject"},
		{"since acked without a subject", []string{"--url", open.node.url, "--since", "acked", "alerts"}, "need a subject"},
		{"not a WebSocket URL", []string{"--url", "http://" + open.node.addr + "/v1/ws", "alerts"}, "want a WebSocket URL"},
		{"no such path", []string{"--url", "ws://" + open.node.addr + "/nope", "alerts"}, "HTTP 404"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, logs strings.Builder
			done := make(chan int, 1)
			go func() { done <- Main(append([]string{"tail"}, tt.args...), &out, &logs) }()
			select {
			case code := <-done:
				if code != 1 || !strings.Contains(logs.String(), tt.want) {
					t.Fatalf("tail exited %d, logged %q; want 1 and %q", code, logs.String(), tt.want)
				}
			case <-time.After(testutil.Wait):
				t.Fatalf("tail still running; it logged %q", logs.String())
			}
		})
	}
}
