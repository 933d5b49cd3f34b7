package app

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/bus"
	wsbusclient "github.com/wsbus/wsbus/clients/js"
	"github.com/wsbus/wsbus/internal/auth"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

//go:embed demo.html
var demoPage []byte

// httpAPI serves every path but wsPath.
type httpAPI struct {
	cfg     ServeConfig
	rdb     redis.UniversalClient
	owner   *bus.Owner
	gw      *bus.Gateway
	auth    *auth.Verifier // nil without authentication
	ws      *ws.Server
	pub     *streams.Publisher
	hist    *streams.History
	started atomic.Bool

	keys        streams.Keys
	partitions  int          // of the bus
	redisErrors *redisErrors // counts the failed commands of rdb and of the lease client
	observed    *observed    // histograms recorded by the owner and gateway
	canary      *canary      // the node's continuity canary (canary.go)
}

func (h *httpAPI) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	m.HandleFunc("GET /readyz", h.readyz)
	m.HandleFunc("POST /v1/publish", h.publish)
	m.HandleFunc("GET /v1/history", h.history)
	m.HandleFunc("GET /v1/unread", h.unread)
	m.Handle("GET /metrics", h.metrics())
	m.HandleFunc("GET /{$}", h.demo)
	m.HandleFunc("GET /wsbus-client.js", h.demoClient)
	m.HandleFunc("GET /status", h.statusPage)
	m.HandleFunc("GET /status.json", h.statusJSON)
	return m
}

func (h *httpAPI) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	switch {
	case !h.started.Load():
		http.Error(w, "starting\n", http.StatusServiceUnavailable)
	case h.rdb.Ping(ctx).Err() != nil:
		http.Error(w, "redis unreachable\n", http.StatusServiceUnavailable)
	default:
		_, _ = io.WriteString(w, "ready\n")
	}
}

func (h *httpAPI) demo(w http.ResponseWriter, _ *http.Request) {
	if h.auth != nil {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(demoPage)
}

// demoClient serves the JavaScript client the demo page imports, beside
// the page and under the same rule (insecure mode only).
func (h *httpAPI) demoClient(w http.ResponseWriter, _ *http.Request) {
	if h.auth != nil {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	_, _ = w.Write(wsbusclient.Source)
}

// publish is POST /v1/publish {"topic":..,"data":..,"deadline":ms?} ->
// {"id":..}.
func (h *httpAPI) publish(w http.ResponseWriter, r *http.Request) {
	if !h.publishKeyOK(w, r) {
		return
	}
	var body struct {
		Topic    string          `json:"topic"`
		Data     json.RawMessage `json:"data"`
		Deadline *int64          `json:"deadline"` // ms; nil for none
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, int64(h.cfg.MaxData)+maxPublishOverhead))
	if err := dec.Decode(&body); err != nil {
		status, msg := h.publishBodyError(err)
		writeError(w, status, msg)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status, msg := h.publishBodyError(err)
			writeError(w, status, msg)
			return
		}
		writeError(w, http.StatusBadRequest, "body must be one JSON object, with nothing after it")
		return
	}
	if len(body.Data) == 0 {
		writeError(w, http.StatusBadRequest, "data is missing")
		return
	}
	if !utf8.Valid(body.Data) {
		writeError(w, http.StatusBadRequest, "data must be JSON, which is UTF-8")
		return
	}
	if bus.IsCanaryTopic(body.Topic) {
		writeError(w, http.StatusForbidden, canaryRefusal)
		return
	}
	var deadline time.Duration
	if body.Deadline != nil {
		if *body.Deadline < 1 || *body.Deadline > streams.MaxDeadline {
			writeError(w, http.StatusBadRequest, deadlineRule)
			return
		}
		deadline = time.Duration(*body.Deadline) * time.Millisecond
	}
	id, err := h.pub.PublishDeadline(r.Context(), body.Topic, body.Data, deadline)
	switch {
	case errors.Is(err, streams.ErrBadTopic):
		writeError(w, http.StatusBadRequest, "topic must be 1-256 bytes of UTF-8 without spaces or control characters")
	case errors.Is(err, streams.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "data is larger than "+strconv.Itoa(h.cfg.MaxData)+" bytes")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]string{"id": id})
	}
}

// maxPublishOverhead is how much larger than --max-data a publish body may
// be: room for the topic (at most 256 bytes), a deadline and the JSON
// around them.
const maxPublishOverhead = 4096

// deadlineRule is the answer to a deadline that is not one.
var deadlineRule = "deadline must be a whole number of milliseconds from 1 to " + strconv.Itoa(streams.MaxDeadline)

// publishBodyError explains, in the API's terms, why a publish body did
// not decode.
func (h *httpAPI) publishBodyError(err error) (status int, msg string) {
	const notObject = `body must be a JSON object {"topic":..,"data":..,"deadline":ms?}`
	var tooLarge *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("body is larger than %d bytes: data may be at most %d bytes", tooLarge.Limit, h.cfg.MaxData)
	case errors.As(err, &typeErr) && typeErr.Field == "topic":
		return http.StatusBadRequest, "topic must be a string"
	case errors.As(err, &typeErr) && typeErr.Field == "deadline":
		return http.StatusBadRequest, deadlineRule
	case errors.As(err, &syntaxErr):
		return http.StatusBadRequest, fmt.Sprintf("%s: %v (at byte %d)", notObject, syntaxErr, syntaxErr.Offset)
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, notObject + ": the body is empty"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, notObject + ": the body ends before the object does"
	default:
		return http.StatusBadRequest, notObject
	}
}

// publishKeyOK checks the publish API key, which POST /v1/publish and GET
// /v1/unread need, answering 403 or 401 when it fails.
func (h *httpAPI) publishKeyOK(w http.ResponseWriter, r *http.Request) bool {
	switch key := h.cfg.PublishKey; {
	case key == "" && !h.cfg.Insecure:
		writeError(w, http.StatusForbidden, "the publish API is off: start the gateway with --publish-key")
		return false
	case key != "" && subtle.ConstantTimeCompare([]byte(bus.BearerToken(r.Header.Get("Authorization"))), []byte(key)) != 1:
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeError(w, http.StatusUnauthorized, "a valid publish key is required (Authorization: Bearer KEY)")
		return false
	}
	return true
}

// maxSubject bounds the sub of GET /v1/unread: longer ones cannot be a
// token's subject worth a Redis read.
const maxSubject = 1024

// unread is GET /v1/unread?topic=&sub= -> {"topic","sub","acked","unread"}:
// a subject's acknowledged cursor ("0" when it never acknowledged one) and
// how many events follow it.
func (h *httpAPI) unread(w http.ResponseWriter, r *http.Request) {
	if !h.publishKeyOK(w, r) {
		return
	}
	q := r.URL.Query()
	topic, sub := q.Get("topic"), q.Get("sub")
	switch {
	case streams.ValidateTopic(topic) != nil:
		writeError(w, http.StatusBadRequest, "topic must be 1-256 bytes of UTF-8 without spaces or control characters")
		return
	case sub == "" || len(sub) > maxSubject:
		writeError(w, http.StatusBadRequest, "sub must be a subject of 1-"+strconv.Itoa(maxSubject)+" bytes")
		return
	case bus.IsCanaryTopic(topic):
		writeError(w, http.StatusForbidden, canaryRefusal)
		return
	}
	c, err := h.hist.Acked(r.Context(), topic, sub)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	acked := "0"
	if !c.ID.IsZero() {
		acked = c.ID.String()
	}
	writeJSON(w, http.StatusOK, map[string]any{"topic": topic, "sub": sub, "acked": acked, "unread": c.Unread})
}

type historyEvent struct {
	ID   string          `json:"id"`
	Seq  uint64          `json:"seq"`
	Data json.RawMessage `json:"data"`
}

// historyAnswer is the JSON of GET /v1/history: what a WebSocket
// "subscribed" says of the cursor (recovered, epoch, head, seq, and missed
// when known), then the first page of events after it.
type historyAnswer struct {
	Topic     string         `json:"topic"`
	Epoch     string         `json:"epoch"`
	Recovered bool           `json:"recovered"`
	Head      string         `json:"head"` // "0" when the topic has no event
	Seq       uint64         `json:"seq"`  // the seq of head; 0 when none
	Missed    *uint64        `json:"missed,omitempty"`
	Events    []historyEvent `json:"events"`
	More      bool           `json:"more"`
}

// history is GET /v1/history?topic=&since=&seq=&epoch=&limit=.
func (h *httpAPI) history(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	topic := q.Get("topic")
	if err := streams.ValidateTopic(topic); err != nil {
		writeError(w, http.StatusBadRequest, "topic must be 1-256 bytes of UTF-8 without spaces or control characters")
		return
	}
	if !h.mayRead(w, r, topic) {
		return
	}
	cursor, limit, msg := historyQuery(q)
	if msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	res, err := h.hist.Resume(r.Context(), topic, cursor, streams.Page{Events: limit, Bytes: historyBytes})
	if errors.Is(err, streams.ErrBadID) {
		writeError(w, http.StatusBadRequest, "since must be a stream ID such as 1718000000000-0, or 0")
		return
	}
	if err == nil && res.Epoch == "" {
		// Redis lost the partition's data and its owner has not yet
		// recreated it: an answer without an epoch would give the client
		// a cursor no later loss could be checked against.
		err = errors.New("the partition has no epoch yet (Redis lost its data?); retry")
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, newHistoryAnswer(topic, res))
}

// historyBytes bounds the event data of one GET /v1/history answer: a
// thousand events of the largest size would be 64 MiB. A page cut short by
// it says more, as one cut short by limit does.
const historyBytes = 1 << 20

// historyQuery reads the cursor and page size of a history request, or
// says what is wrong with them. since defaults to "0" (everything
// retained).
func historyQuery(q url.Values) (c streams.Cursor, limit int, msg string) {
	c = streams.Cursor{Since: q.Get("since"), Epoch: q.Get("epoch")}
	if c.Since == "" {
		c.Since = "0"
	}
	if s := q.Get("seq"); s != "" {
		var err error
		if c.Seq, err = streams.ParseSeq(s); err != nil {
			return c, 0, "seq must be the non-negative integer seq of the event since names"
		}
		c.HasSeq = true
	}
	limit = 100
	if s := q.Get("limit"); s != "" {
		var err error
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return c, 0, "limit must be 1..1000"
		}
	}
	return c, limit, ""
}

// newHistoryAnswer shapes a Resume as GET /v1/history answers it; missed
// goes with recovered:false, as on the WebSocket.
func newHistoryAnswer(topic string, res streams.Resume) historyAnswer {
	a := historyAnswer{Topic: topic, Epoch: res.Epoch, Recovered: res.Recovered, Head: "0", Seq: res.HeadSeq,
		Events: make([]historyEvent, len(res.Events)), More: res.More}
	if !res.Head.IsZero() {
		a.Head = res.Head.String()
	}
	if res.MissedKnown && !res.Recovered {
		a.Missed = &res.Missed
	}
	for i, e := range res.Events {
		a.Events[i] = historyEvent{ID: e.ID, Seq: e.Seq, Data: streams.AppendData(nil, []byte(e.Data))}
	}
	return a
}

// canaryRefusal answers a request for a canary topic.
const canaryRefusal = "topics starting with " + bus.CanaryPrefix + " are reserved for the bus's own canary"

// mayRead checks the request's token (Authorization: Bearer, or ?token=)
// for topic when authentication is on, answering 401 or 403 when it fails.
// A canary topic is refused to every request.
func (h *httpAPI) mayRead(w http.ResponseWriter, r *http.Request, topic string) bool {
	if bus.IsCanaryTopic(topic) {
		writeError(w, http.StatusForbidden, canaryRefusal)
		return false
	}
	if h.auth == nil {
		return true
	}
	token := bus.BearerToken(r.Header.Get("Authorization"))
	if token == "" {
		token = r.URL.Query().Get("token")
	}
	claims, err := h.auth.Verify(token)
	if err != nil {
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeError(w, http.StatusUnauthorized, "a valid token is required (Authorization: Bearer, or ?token=)")
		return false
	}
	if !claims.Allows(topic) {
		writeError(w, http.StatusForbidden, "token does not allow this topic")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
