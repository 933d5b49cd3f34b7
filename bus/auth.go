package bus

import (
	"container/heap"
	"crypto/subtle"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/internal/auth"
	"github.com/wsbus/wsbus/ws"
)

// TokenVerifier checks a client's token and returns what it grants: the
// one thing the Gateway needs of authentication (*auth.Verifier is one).
// Verify is called on the WebSocket workers, once per handshake and per
// refresh, so it must be safe for concurrent use and should not block. A
// token with nil claims is refused.
type TokenVerifier interface {
	Verify(token string) (*auth.Claims, error)
}

// CanaryPrefix starts the topics the bus keeps for itself: each node's
// continuity canary (app/canary.go) publishes to one of them per partition
// and reads them all back through its own gateway. No client may
// subscribe to them, acknowledge them, or read or publish them over HTTP;
// only a connection that presents the node's canary key may subscribe,
// and to them only.
const CanaryPrefix = "$canary."

// IsCanaryTopic reports whether topic is one of the bus's own canary
// topics.
func IsCanaryTopic(topic string) bool { return strings.HasPrefix(topic, CanaryPrefix) }

// CanaryScheme is the Authorization scheme of the node's own canary client:
// "Authorization: Wsbus-Canary KEY", KEY being GatewayConfig.CanaryKey. The
// Authorization header, not one of its own, because it is the one the
// WebSocket edge hands the Gateway (ws.Request).
const CanaryScheme = "Wsbus-Canary"

// canaryClaims are the rights of the node's canary client: the canary
// topics, no subject and no expiry. A client holds this very pointer when
// it was admitted by the canary key (see client.allows).
var canaryClaims = &auth.Claims{Topics: []string{CanaryPrefix + "*"}}

// forbiddenText explains a refused topic.
func forbiddenText(topic string) string {
	if IsCanaryTopic(topic) {
		return "topics starting with " + CanaryPrefix + " are reserved for the bus's own canary"
	}
	return "token does not allow this topic"
}

// Accept checks a handshake's Origin and, when authentication is on, its
// token (Authorization: Bearer, or ?token=), before the upgrade. The
// node's own canary presents its key instead of a token (CanaryScheme).
func (g *Gateway) Accept(r *ws.Request) error {
	if !g.originAllowed(r.Origin, r.Host) {
		return ws.Reject(http.StatusForbidden, "origin not allowed")
	}
	if key, ok := canaryKey(string(r.Authorization)); ok {
		// Compared in constant time: the key admits to the canary
		// topics without a token.
		if g.cfg.CanaryKey == "" || subtle.ConstantTimeCompare([]byte(key), []byte(g.cfg.CanaryKey)) != 1 {
			return ws.Reject(http.StatusUnauthorized, "invalid canary key")
		}
		r.State = canaryClaims
		return nil
	}
	if g.cfg.Auth == nil {
		return nil
	}
	token := BearerToken(string(r.Authorization))
	if token == "" {
		token, _ = queryValue(r.URI, "token")
	}
	if token == "" {
		return ws.Reject(http.StatusUnauthorized, "a token is required (Authorization: Bearer, or ?token=)")
	}
	claims, err := g.cfg.Auth.Verify(token)
	if err != nil || claims == nil { // no claims would grant everything
		return ws.Reject(http.StatusUnauthorized, "invalid token")
	}
	r.State = claims
	return nil
}

// canaryKey returns the key of an "Authorization: Wsbus-Canary KEY" value;
// ok for the scheme without a key too, which is refused, not taken for a
// client without one.
func canaryKey(header string) (key string, ok bool) {
	scheme, key, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, CanaryScheme) {
		return "", false
	}
	return strings.TrimSpace(key), true
}

// BearerToken returns the token of an "Authorization: Bearer" value.
func BearerToken(header string) string {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// originAllowed applies the allow-list: no Origin (not a browser) passes;
// "*" allows every origin; an empty list allows only the page's own host.
func (g *Gateway) originAllowed(origin, host []byte) bool {
	if len(origin) == 0 {
		return true
	}
	for _, o := range g.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, string(origin)) {
			return true
		}
	}
	if len(g.cfg.AllowedOrigins) == 0 {
		u, err := url.Parse(string(origin))
		return err == nil && strings.EqualFold(u.Host, string(host))
	}
	return false
}

// refresh replaces a connection's token with a newer one of the same
// subject; subscriptions the new token does not allow are dropped.
func (g *Gateway) refresh(c *ws.Conn, cl *client, token string) {
	if g.cfg.Auth == nil {
		g.sendError(c, codeBadRequest, "", "authentication is off: there is no token to refresh")
		return
	}
	claims, err := g.cfg.Auth.Verify(token)
	if err != nil || claims == nil {
		g.sendError(c, codeUnauthorized, "", "invalid token")
		return
	}
	cl.mu.Lock()
	if cl.claims == canaryClaims {
		cl.mu.Unlock()
		g.sendError(c, codeUnauthorized, "", "the canary's connection takes no token")
		return
	}
	if cl.claims != nil && claims.Subject != cl.claims.Subject {
		cl.mu.Unlock()
		g.sendError(c, codeUnauthorized, "", "the new token is for another subject")
		return
	}
	cl.claims = claims
	var dropped []*subscription
	for _, s := range slices.Clone(cl.subs) {
		if !claims.Allows(s.topic.name()) {
			cl.removeLocked(s)
			dropped = append(dropped, s)
		}
	}
	cl.mu.Unlock()
	g.expiries.set(cl, claims.Expires)
	for _, s := range dropped {
		g.removeSub(s)
		g.sendError(c, codeForbidden, s.topic.name(), "the refreshed token does not allow this topic")
	}
	_ = c.Send(ws.TextFrame(appendRefreshed(nil, claims.Expires)))
}

// expiries closes connections whose token ran out with 4003: one goroutine
// and a heap of the clients with a token, no timer per connection. A
// client is in the heap at most once (a refresh moves it) and leaves it
// for good when its connection closes: remove marks it gone, and a
// refresh that raced the close (its set comes after remove) is ignored,
// or the heap would keep the client and its connection until the token
// ran out.
type expiries struct {
	mu   sync.Mutex
	h    expiryHeap
	wake chan struct{}
}

// expiryHeap orders clients by token expiry; client.expAt and
// client.expIdx are guarded by expiries.mu.
//
// expIdx is the client's index in the heap, expOut (-1) when it is not in
// it, or expGone (-2) once its connection closed.
type expiryHeap []*client

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expAt < h[j].expAt }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].expIdx, h[j].expIdx = int32(i), int32(j)
}
func (h *expiryHeap) Push(x any) {
	cl := x.(*client)
	cl.expIdx = int32(len(*h))
	*h = append(*h, cl)
}
func (h *expiryHeap) Pop() any {
	old := *h
	cl := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	cl.expIdx = expOut
	return cl
}

// The values of client.expIdx that are no heap index.
const (
	expOut  = -1 // not in the heap
	expGone = -2 // closed: never in the heap again
)

func newExpiries() *expiries { return &expiries{wake: make(chan struct{}, 1)} }

// set makes cl's connection expire at at, unless it is closed.
func (e *expiries) set(cl *client, at time.Time) {
	e.mu.Lock()
	if cl.expIdx == expGone {
		e.mu.Unlock()
		return
	}
	cl.expAt = at.UnixNano()
	if cl.expIdx >= 0 {
		heap.Fix(&e.h, int(cl.expIdx))
	} else {
		heap.Push(&e.h, cl)
	}
	first := e.h[0] == cl
	e.mu.Unlock()
	if first {
		wake(e.wake)
	}
}

// remove forgets a closed client for good: a later set is ignored.
func (e *expiries) remove(cl *client) {
	e.mu.Lock()
	if cl.expIdx >= 0 {
		heap.Remove(&e.h, int(cl.expIdx))
	}
	cl.expIdx = expGone
	e.mu.Unlock()
}

// run closes expired connections until done is closed.
func (e *expiries) run(done <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e.mu.Lock()
		var due []*client
		now := time.Now()
		for len(e.h) > 0 && e.h[0].expAt <= now.UnixNano() {
			due = append(due, heap.Pop(&e.h).(*client))
		}
		next := time.Hour
		if len(e.h) > 0 {
			next = time.Until(time.Unix(0, e.h[0].expAt))
		}
		e.mu.Unlock()
		for _, cl := range due {
			cl.conn().Close(wsbus.CloseTokenExpired, "token expired: reconnect with a new one")
		}
		timer.Reset(next)
		select {
		case <-done:
			return
		case <-e.wake:
		case <-timer.C:
		}
	}
}
