package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// Centrifugo is the server name of a Centrifugo v6 the bench measures as a
// peer beside the baselines: it is not started by the bench but given as
// Config.CentrifugoURL (internal/bench/run.sh starts one on the bench's
// Redis with its Redis engine, history and recovery on in the "bench"
// namespace, which the shared topic bench:shared is a channel of). Its
// clients speak Centrifugo's JSON client protocol and the bench publishes
// through its HTTP server API.
const Centrifugo = "centrifugo"

// cfCursor is where a Centrifugo subscription stands: the offset of the
// last publication received and the stream's epoch.
type cfCursor struct {
	offset uint64
	epoch  string
}

// cfMessage is one message of Centrifugo's JSON client protocol from the
// server: a reply to command ID, or a push (ID 0). An empty message, {},
// is a ping to be answered with {}.
type cfMessage struct {
	ID        uint32       `json:"id"`
	Error     *cfError     `json:"error"`
	Connect   *struct{}    `json:"connect"`
	Subscribe *cfSubscribe `json:"subscribe"`
	Push      *cfPush      `json:"push"`
}

type cfError struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

type cfSubscribe struct {
	Recoverable  bool    `json:"recoverable"`
	Epoch        string  `json:"epoch"`
	Offset       uint64  `json:"offset"`
	Recovered    bool    `json:"recovered"`
	Publications []cfPub `json:"publications"`
}

type cfPush struct {
	Channel    string   `json:"channel"`
	Pub        *cfPub   `json:"pub"`
	Disconnect *cfError `json:"disconnect"`
}

type cfPub struct {
	Data   json.RawMessage `json:"data"`
	Offset uint64          `json:"offset"`
}

// event decodes the bench's own data of p; ok is false for other data.
func (p *cfPub) event() (t, k int64, ok bool) {
	var d struct{ T, K *int64 }
	if json.Unmarshal(p.Data, &d) != nil || d.T == nil || d.K == nil {
		return 0, 0, false
	}
	return *d.T, *d.K, true
}

// cfLines splits a frame of Centrifugo's JSON protocol into its messages,
// one a line.
func cfLines(frame []byte, each func(line []byte)) {
	for len(frame) > 0 {
		line, rest, _ := bytes.Cut(frame, []byte{'\n'})
		if len(bytes.TrimSpace(line)) > 0 {
			each(line)
		}
		frame = rest
	}
}

// parseCentrifugoPub picks offset and the bench's data out of a
// publication push as Centrifugo writes it,
// {"push":{"channel":"C","pub":{"data":{"t":T,"k":K},"offset":N}}}, with
// no JSON decoder (see record); ok is false for anything else, which is
// then decoded as JSON.
func parseCentrifugoPub(b []byte) (offset uint64, t, k int64, ok bool) {
	rest, found := bytes.CutPrefix(b, []byte(`{"push":{"channel":"`))
	if !found {
		return 0, 0, 0, false
	}
	i := bytes.IndexAny(rest, `"\`)
	if i < 0 || rest[i] != '"' {
		return 0, 0, 0, false
	}
	if rest, found = bytes.CutPrefix(rest[i:], []byte(`","pub":{"data":{"t":`)); !found {
		return 0, 0, 0, false
	}
	ts, rest, _ := bytes.Cut(rest, []byte(`,"k":`))
	ks, rest, _ := bytes.Cut(rest, []byte(`},"offset":`))
	offs, rest, _ := bytes.Cut(rest, []byte(`}}}`))
	if len(rest) > 0 {
		return 0, 0, 0, false
	}
	t, err1 := strconv.ParseInt(string(ts), 10, 64)
	k, err2 := strconv.ParseInt(string(ks), 10, 64)
	offset, err3 := strconv.ParseUint(string(offs), 10, 64)
	return offset, t, k, err1 == nil && err2 == nil && err3 == nil
}

// cfPubOf reads a publication push of the bench's data out of one message.
func cfPubOf(line []byte) (offset uint64, t, k int64, ok bool) {
	if offset, t, k, ok = parseCentrifugoPub(line); ok {
		return offset, t, k, true
	}
	var m cfMessage
	if json.Unmarshal(line, &m) != nil || m.Push == nil || m.Push.Pub == nil {
		return 0, 0, 0, false
	}
	t, k, ok = m.Push.Pub.event()
	return m.Push.Pub.Offset, t, k, ok
}

// cfPing is a ping, and the pong that answers it.
var cfPing = []byte("{}")

// recordCentrifugo handles a frame from a Centrifugo connection: answers
// pings and records publications. It runs with wc.mu held.
func (w *worker) recordCentrifugo(wc *wconn, frame []byte, now int64) {
	cfLines(frame, func(line []byte) {
		if bytes.Equal(bytes.TrimSpace(line), cfPing) {
			var pong bytes.Buffer
			_ = ws.WriteFrame(&pong, ws.MaskFrame(ws.NewTextFrame(cfPing)))
			_ = w.in.send(wc, pong.Bytes()) // a few bytes: the socket has room
			return
		}
		if offset, t, k, ok := cfPubOf(line); ok {
			w.cfReceipt(wc, offset, t, k, now)
		}
	})
}

// cfReceipt records a publication at offset: one at or below the cursor
// came twice. It runs with wc.mu held.
func (w *worker) cfReceipt(wc *wconn, offset uint64, t, k int64, now int64) {
	if offset <= wc.cf.offset {
		w.dups.Add(1)
	} else {
		wc.cf.offset = offset
	}
	w.tally(wc, t, k, now)
}

// cfCommands are the first frame of a Centrifugo connection: connect, then
// subscribe to topic, recovering from the cursor on a resume.
func cfCommands(topic string, resume bool, cur cfCursor) []byte {
	sub := map[string]any{"channel": topic}
	if resume && cur.epoch != "" {
		sub["recover"], sub["offset"], sub["epoch"] = true, cur.offset, cur.epoch
	}
	c, _ := json.Marshal(map[string]any{"id": 1, "connect": map[string]any{}})
	s, _ := json.Marshal(map[string]any{"id": 2, "subscribe": sub})
	return append(append(c, '\n'), s...)
}

// connectCentrifugo dials wc to Centrifugo, connects and subscribes (with
// recovery on a resume), records the publications the subscribe reply
// recovered, and hands the socket to the inbox.
func (w *worker) connectCentrifugo(wc *wconn, resume bool) (recovered bool, err error) {
	wc.mu.Lock()
	cmds := cfCommands(wc.topic, resume, wc.cf)
	wc.mu.Unlock()
	conn, br, rw, err := dial(wc, w.job.URL)
	if err != nil {
		return true, err
	}
	if err := wsutil.WriteClientText(rw, cmds); err != nil {
		_ = conn.Close()
		return true, err
	}
	var sub *cfSubscribe
	var early [][]byte // lines after the subscribe reply in its frame
	for sub == nil {
		frame, err := wsutil.ReadServerText(rw)
		if err != nil {
			_ = conn.Close()
			return true, fmt.Errorf("waiting for the subscribe reply: %w", err)
		}
		var bad error
		cfLines(frame, func(line []byte) {
			if sub != nil {
				early = append(early, line)
				return
			}
			var m cfMessage
			switch {
			case json.Unmarshal(line, &m) != nil:
				bad = fmt.Errorf("undecodable message %q", line)
			case m.Error != nil:
				bad = fmt.Errorf("command %d: error %d %s", m.ID, m.Error.Code, m.Error.Message)
			case m.ID == 2 && m.Subscribe != nil:
				sub = m.Subscribe
			}
		})
		if bad == nil && sub != nil && !sub.Recoverable {
			bad = errors.New("the subscription is not recoverable: is recovery on for the namespace?")
		}
		if bad != nil {
			_ = conn.Close()
			return true, bad
		}
	}
	now := time.Now().UnixNano()
	wc.mu.Lock()
	wc.resumed = resume
	if !resume || sub.Epoch != wc.cf.epoch {
		wc.cf = cfCursor{offset: sub.Offset, epoch: sub.Epoch}
	}
	for _, p := range sub.Publications {
		if t, k, ok := p.event(); ok {
			w.cfReceipt(wc, p.Offset, t, k, now)
		}
	}
	for _, line := range early {
		w.recordCentrifugo(wc, line, now)
	}
	wc.mu.Unlock()
	rest, _ := br.Peek(br.Buffered())
	if err := w.in.adopt(wc, conn, rest, resume); err != nil {
		return sub.Recovered, err // the answer has moved wc.cf
	}
	return sub.Recovered, nil
}

// cfAPI is the HTTP server API of a Centrifugo.
type cfAPI struct {
	base   string // e.g. http://127.0.0.1:8000/api/
	key    string
	client *http.Client
}

// newCfAPI is the HTTP server API of the Centrifugo whose WebSocket
// endpoint is wsURL.
func newCfAPI(wsURL, apiKey string) (*cfAPI, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, fmt.Errorf("parsing the Centrifugo URL: %w", err)
	}
	scheme := "http"
	if u.Scheme == "wss" {
		scheme = "https"
	}
	return &cfAPI{base: scheme + "://" + u.Host + "/api/", key: apiKey, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

// call posts body to the API's method and returns the reply, an error
// unless it is 200 OK with no top-level error.
func (a *cfAPI) call(ctx context.Context, method string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+method, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", a.key)
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	var r struct {
		Error *cfError `json:"error"`
	}
	switch {
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("centrifugo %s: %s: %s", method, resp.Status, strings.TrimSpace(string(reply)))
	case json.Unmarshal(reply, &r) != nil:
		return nil, fmt.Errorf("centrifugo %s: undecodable reply %q", method, reply)
	case r.Error != nil:
		return nil, fmt.Errorf("centrifugo %s: error %d %s", method, r.Error.Code, r.Error.Message)
	}
	return reply, nil
}

// cfPublish is the body of Centrifugo's publish command.
type cfPublish struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// cfPublisher publishes through the HTTP server API of the Centrifugo
// whose WebSocket endpoint is wsURL, one publish request an event.
func cfPublisher(wsURL, apiKey string) (publishFunc, error) {
	api, err := newCfAPI(wsURL, apiKey)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, topic string, data []byte) error {
		body, _ := json.Marshal(cfPublish{topic, data})
		_, err := api.call(ctx, "publish", body)
		return err
	}, nil
}

// cfBatchPublisher publishes the capacity phase's events through the
// HTTP server API of the Centrifugo whose WebSocket endpoint is wsURL: a
// tick's events are one batch request, its commands run in parallel, so
// that Centrifugo's Redis engine pipelines their publishes (as the bus's
// ingress takes a tick's XADDs in one pipeline) rather than waiting for
// Redis once an event.
func cfBatchPublisher(wsURL, apiKey string) (batchPublishFunc, error) {
	api, err := newCfAPI(wsURL, apiKey)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, events []capEvent) error {
		reply, err := api.call(ctx, "batch", cfBatchBody(events))
		if err != nil {
			return err
		}
		return cfBatchReplies(reply, len(events))
	}, nil
}

// cfBatchBody is a batch request publishing events, in parallel.
func cfBatchBody(events []capEvent) []byte {
	type command struct {
		Publish cfPublish `json:"publish"`
	}
	var req struct {
		Commands []command `json:"commands"`
		Parallel bool      `json:"parallel"`
	}
	req.Parallel = true
	for _, e := range events {
		req.Commands = append(req.Commands, command{cfPublish{e.topic, e.data}})
	}
	body, _ := json.Marshal(req)
	return body
}

// cfBatchReplies checks the reply to a batch of n commands: one reply
// each, none an error.
func cfBatchReplies(reply []byte, n int) error {
	var r struct {
		Replies []struct {
			Error *cfError `json:"error"`
		} `json:"replies"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("centrifugo batch: undecodable reply %q", reply)
	}
	if len(r.Replies) != n {
		return fmt.Errorf("centrifugo batch: %d replies to %d commands", len(r.Replies), n)
	}
	for i, c := range r.Replies {
		if c.Error != nil {
			return fmt.Errorf("centrifugo batch: command %d of %d: error %d %s", i, n, c.Error.Code, c.Error.Message)
		}
	}
	return nil
}

// publishFunc publishes data to a topic of the server measured.
type publishFunc func(ctx context.Context, topic string, data []byte) error

// publisherFor publishes to server: Centrifugo through its HTTP API at
// wsURL's host, the others by XADD to the bus's ingress streams.
func publisherFor(ctx context.Context, cfg Config, server, wsURL string) (publishFunc, error) {
	if server == Centrifugo {
		return cfPublisher(wsURL, cfg.CentrifugoAPIKey)
	}
	n, err := streams.Partitions(ctx, cfg.Redis, cfg.Keys)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, topic string, data []byte) error {
		stream := cfg.Keys.Ingress(streams.Partition(topic, n))
		return cfg.Redis.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"topic", topic, "data", data}}).Err()
	}, nil
}

// protocol is the client protocol of server.
func protocol(server string) string {
	if server == Centrifugo {
		return Centrifugo
	}
	return ""
}

// openOther opens st, a baseline, which it starts, or the Centrifugo at
// cfg.CentrifugoURL.
func openOther(ctx context.Context, cfg Config, st *stage) error {
	if st.server != Centrifugo {
		return openBaseline(ctx, cfg, st)
	}
	if cfg.CentrifugoURL == "" {
		return errors.New("no Centrifugo URL")
	}
	progress(cfg, "measuring Centrifugo at %s", cfg.CentrifugoURL)
	st.urls = []string{cfg.CentrifugoURL}
	return st.open(ctx, cfg)
}
