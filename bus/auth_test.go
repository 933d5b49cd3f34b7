package bus

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbus/wsbus/internal/auth"
	"github.com/wsbus/wsbus/internal/authtest"
	"github.com/wsbus/wsbus/ws"
)

// fakeVerifier grants the claims it holds for a token; any other token is
// invalid.
type fakeVerifier map[string]*auth.Claims

func (f fakeVerifier) Verify(token string) (*auth.Claims, error) {
	if c, ok := f[token]; ok {
		return c, nil
	}
	return nil, errors.New("invalid token")
}

var _ TokenVerifier = (*auth.Verifier)(nil)

// TestAcceptVerifiesTheToken: with a TokenVerifier the handshake needs a
// token it accepts, from the Authorization header or the query, and
// hands its claims to Open; without one every handshake passes.
func TestAcceptVerifiesTheToken(t *testing.T) {
	alice := &auth.Claims{Subject: "alice"}
	tokens := fakeVerifier{"good": alice, "empty": nil}
	tests := []struct {
		name          string
		verifier      TokenVerifier
		uri, header   string
		status        int // 0: accepted
		wantAnonymous bool
	}{
		{"bearer", tokens, "/v1/ws", "Bearer good", 0, false},
		{"query", tokens, "/v1/ws?topic=a&token=good", "", 0, false},
		{"no token", tokens, "/v1/ws", "", http.StatusUnauthorized, false},
		{"bad token", tokens, "/v1/ws", "Bearer bad", http.StatusUnauthorized, false},
		{"a token without claims", tokens, "/v1/ws", "Bearer empty", http.StatusUnauthorized, false},
		{"no verifier", nil, "/v1/ws", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Gateway{cfg: GatewayConfig{Auth: tt.verifier}}
			r := &ws.Request{URI: []byte(tt.uri), Authorization: []byte(tt.header)}
			err := g.Accept(r)
			var refused interface{ StatusCode() int }
			switch {
			case tt.status != 0:
				if !errors.As(err, &refused) || refused.StatusCode() != tt.status {
					t.Fatalf("Accept = %v, want a refusal with %d", err, tt.status)
				}
			case err != nil:
				t.Fatalf("Accept = %v, want nil", err)
			case tt.wantAnonymous && r.State != nil:
				t.Fatalf("State = %v, want none without a verifier", r.State)
			case !tt.wantAnonymous && r.State != alice:
				t.Fatalf("State = %v, want the token's claims", r.State)
			}
		})
	}
}

// TestExpiryForgetsClosedClient: once a connection's client is removed
// (Closed), a token refresh that raced the close cannot put it back in the
// expiry heap, which would keep the client and its connection until the
// token ran out.
func TestExpiryForgetsClosedClient(t *testing.T) {
	in := time.Now().Add(time.Hour)
	tests := []struct {
		name  string
		steps string // s: set, r: remove
		want  int    // clients left in the heap
	}{
		{"set", "s", 1},
		{"refresh", "ss", 1},
		{"closed", "sr", 0},
		{"refresh after close", "srs", 0},
		{"closed before a token was set", "rs", 0},
		{"closed twice", "srrs", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newExpiries()
			cl, other := newClient(nil), newClient(nil)
			e.set(other, in.Add(time.Minute)) // a heap of one is no test of the index
			for _, step := range tt.steps {
				switch step {
				case 's':
					e.set(cl, in)
				case 'r':
					e.remove(cl)
				}
			}
			if got := len(e.h) - 1; got != tt.want {
				t.Fatalf("after %q the heap holds the client %d times, want %d", tt.steps, got, tt.want)
			}
			for i, c := range e.h {
				if int(c.expIdx) != i {
					t.Fatalf("heap entry %d has index %d", i, c.expIdx)
				}
			}
		})
	}
}

// TestCanaryKeyAdmitsToCanaryTopicsOnly: a handshake presenting the node's
// canary key is admitted as the canary, with or without authentication,
// and may subscribe to canary topics only; a wrong key, or any key when the
// gateway has none, is refused with 401; a client admitted any other way
// may not subscribe to a canary topic, whatever its token allows.
func TestCanaryKeyAdmitsToCanaryTopicsOnly(t *testing.T) {
	secret := []byte("canary-test-secret")
	verifier, err := auth.New(auth.Config{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	everything := authtest.Sign(t, jwt.SigningMethodHS256, secret, jwt.MapClaims{
		"sub": "u1", "exp": time.Now().Add(time.Hour).Unix(), "topics": []string{"*"},
	})
	tests := []struct {
		name   string
		key    string // the gateway's CanaryKey
		auth   bool   // authentication on
		header string // Authorization
		status int    // of the refusal; 0 when admitted
		canary bool   // admitted as the canary
	}{
		{"canary key", "k3y", false, "Wsbus-Canary k3y", 0, true},
		{"canary key with authentication", "k3y", true, "Wsbus-Canary k3y", 0, true},
		{"scheme in other case", "k3y", true, "wsbus-canary k3y", 0, true},
		{"wrong key", "k3y", false, "Wsbus-Canary k3z", http.StatusUnauthorized, false},
		{"empty key", "k3y", false, "Wsbus-Canary ", http.StatusUnauthorized, false},
		{"scheme alone", "k3y", false, "Wsbus-Canary", http.StatusUnauthorized, false},
		{"key of a gateway without one", "", false, "Wsbus-Canary k3y", http.StatusUnauthorized, false},
		{"no key, insecure", "k3y", false, "", 0, false},
		{"a token allowing every topic", "k3y", true, "Bearer " + everything, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Gateway{cfg: GatewayConfig{CanaryKey: tt.key}}
			if tt.auth {
				g.cfg.Auth = verifier
			}
			r := &ws.Request{URI: []byte("/v1/ws"), Authorization: []byte(tt.header)}
			err := g.Accept(r)
			var coded interface{ StatusCode() int }
			switch {
			case tt.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.status != 0 && (!errors.As(err, &coded) || coded.StatusCode() != tt.status):
				t.Fatalf("Accept = %v, want a refusal with %d", err, tt.status)
			case tt.status != 0:
				return
			}
			cl := newClient(nil)
			cl.claims, _ = r.State.(*auth.Claims)
			if got := r.State == canaryClaims; got != tt.canary {
				t.Fatalf("admitted as the canary: %v, want %v", got, tt.canary)
			}
			for _, topic := range []string{"$canary.0", "$canary.17"} {
				if got := cl.allows(topic); got != tt.canary {
					t.Errorf("allows(%q) = %v, want %v", topic, got, tt.canary)
				}
			}
			if got := cl.allows("user:1"); got == tt.canary {
				t.Errorf("allows(user:1) = %v for a client admitted as the canary: %v", got, tt.canary)
			}
		})
	}
}

// FuzzCanaryAuthorization: whatever Authorization header a handshake
// sends, Accept admits it as the canary only when it carries the canary
// scheme and the gateway's very key, and it never panics.
func FuzzCanaryAuthorization(f *testing.F) {
	const key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
	for _, seed := range []string{
		"Wsbus-Canary " + key, "wsbus-canary  " + key + " ", "Wsbus-Canary", "Wsbus-Canary ", "Wsbus-Canary " + key + "x",
		"Bearer " + key, "", " ", "Wsbus-Canary\t" + key, "Wsbus-CanaryX " + key, "Wsbus-Canary " + key[:31],
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		g := &Gateway{cfg: GatewayConfig{CanaryKey: key}}
		r := &ws.Request{URI: []byte("/v1/ws"), Authorization: []byte(header)}
		err := g.Accept(r)
		scheme, rest, _ := strings.Cut(header, " ")
		want := strings.EqualFold(scheme, CanaryScheme) && strings.TrimSpace(rest) == key
		if got := err == nil && r.State == canaryClaims; got != want {
			t.Fatalf("Authorization %q: admitted as the canary %v (err %v), want %v", header, got, err, want)
		}
		if strings.EqualFold(scheme, CanaryScheme) && !want && err == nil {
			t.Fatalf("Authorization %q with a wrong canary key was admitted", header)
		}
	})
}
