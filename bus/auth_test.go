package bus

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/wsbus/wsbus/internal/auth"
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
	tokens := fakeVerifier{"good": alice}
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
