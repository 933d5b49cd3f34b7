package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// Messages as Centrifugo v6.9.1 wrote them to a client of the bench, with
// run.sh's configuration.
const (
	cfConnectReply   = `{"id":1,"connect":{"client":"beff4350-f30c-4da3-8139-2837a16b12a0","version":"0.0.0 OSS","ping":25,"pong":true}}`
	cfSubscribeReply = `{"id":2,"subscribe":{"recoverable":true,"epoch":"LCEnfICb","positioned":true}}`
	cfRecoveredReply = `{"id":2,"subscribe":{"recoverable":true,"epoch":"LCEnfICb","publications":[{"data":{"t":5,"k":6},"offset":2},{"data":{"t":123,"k":-1},"offset":3}],"recovered":true,"offset":1,"positioned":true,"was_recovering":true}}`
	cfNotRecovered   = `{"id":2,"subscribe":{"recoverable":true,"epoch":"LCEnfICb","offset":2,"positioned":true,"was_recovering":true}}`
	cfErrorReply     = `{"id":2,"error":{"code":102,"message":"unknown channel"}}`
	cfPubPush        = `{"push":{"channel":"bench:shared","pub":{"data":{"t":123,"k":4},"offset":3}}}`
	cfFirstPush      = `{"push":{"channel":"bench:shared","pub":{"data":{"t":123,"k":4},"offset":1,"epoch":"LCEnfICb"}}}`
)

// TestCentrifugoReplies decodes the replies to connect and subscribe: the
// stream's position, the recovered flag and the publications recovered.
func TestCentrifugoReplies(t *testing.T) {
	var m cfMessage
	if err := json.Unmarshal([]byte(cfConnectReply), &m); err != nil || m.ID != 1 || m.Connect == nil || m.Error != nil {
		t.Fatalf("connect reply: %+v, %v", m, err)
	}
	m = cfMessage{}
	if err := json.Unmarshal([]byte(cfSubscribeReply), &m); err != nil || m.ID != 2 || m.Subscribe == nil {
		t.Fatalf("subscribe reply: %+v, %v", m, err)
	}
	if s := m.Subscribe; !s.Recoverable || s.Epoch != "LCEnfICb" || s.Offset != 0 || s.Recovered {
		t.Errorf("subscribe reply: %+v", s)
	}
	m = cfMessage{}
	if err := json.Unmarshal([]byte(cfRecoveredReply), &m); err != nil || m.Subscribe == nil {
		t.Fatalf("recovered reply: %+v, %v", m, err)
	}
	s := m.Subscribe
	if !s.Recovered || len(s.Publications) != 2 || s.Publications[0].Offset != 2 || s.Publications[1].Offset != 3 {
		t.Fatalf("recovered reply: %+v", s)
	}
	if ts, k, ok := s.Publications[1].event(); !ok || ts != 123 || k != kindStorm {
		t.Errorf("recovered publication: %d %d %v, want 123 %d", ts, k, ok, kindStorm)
	}
	m = cfMessage{}
	if err := json.Unmarshal([]byte(cfErrorReply), &m); err != nil || m.Error == nil || m.Error.Code != 102 || m.Subscribe != nil {
		t.Fatalf("error reply: %+v, %v", m, err)
	}
}

// TestParseCentrifugoPub reads a publication push without a decoder, and
// one the fast path does not take (the first of a stream carries its
// epoch) with one.
func TestParseCentrifugoPub(t *testing.T) {
	if off, ts, k, ok := parseCentrifugoPub([]byte(cfPubPush)); !ok || off != 3 || ts != 123 || k != 4 {
		t.Errorf("parseCentrifugoPub(%s) = %d %d %d %v", cfPubPush, off, ts, k, ok)
	}
	if _, _, _, ok := parseCentrifugoPub([]byte(cfFirstPush)); ok {
		t.Errorf("parseCentrifugoPub(%s) ok, want it left to the decoder", cfFirstPush)
	}
	if off, ts, k, ok := cfPubOf([]byte(cfFirstPush)); !ok || off != 1 || ts != 123 || k != 4 {
		t.Errorf("cfPubOf(%s) = %d %d %d %v", cfFirstPush, off, ts, k, ok)
	}
	for _, other := range []string{cfConnectReply, cfRecoveredReply, cfErrorReply, `{}`,
		`{"push":{"channel":"bench:shared","pub":{"data":{"text":"hi"},"offset":3}}}`,
		`{"push":{"channel":"a\",\"pub\":{\"data\":{\"t\":1,\"k\":2},\"offset\":3}}}`} {
		if _, _, _, ok := cfPubOf([]byte(other)); ok {
			t.Errorf("cfPubOf(%s) ok, want not a publication of the bench", other)
		}
	}
}

// TestCfCommands: a first subscribe asks for nothing but the channel, a
// resume for recovery from the cursor.
func TestCfCommands(t *testing.T) {
	first := string(cfCommands("bench:shared", false, cfCursor{offset: 7, epoch: "E"}))
	if first != `{"connect":{},"id":1}`+"\n"+`{"id":2,"subscribe":{"channel":"bench:shared"}}` {
		t.Errorf("first connect: %s", first)
	}
	resume := string(cfCommands("bench:shared", true, cfCursor{offset: 7, epoch: "E"}))
	if !strings.HasSuffix(resume, `{"id":2,"subscribe":{"channel":"bench:shared","epoch":"E","offset":7,"recover":true}}`) {
		t.Errorf("resume: %s", resume)
	}
}

// TestRecordCentrifugo feeds a connection a frame of several messages: the
// ping is answered with {} on the socket, each publication counted once and
// one at an offset already seen as a duplicate.
func TestRecordCentrifugo(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[1])
	now := time.Now().UnixNano()
	w := &worker{job: Job{Protocol: Centrifugo}}
	in := &inbox{w: w}
	w.in = in
	wc := &wconn{fd: fds[0], shard: &w.shards[0]}
	defer syscall.Close(fds[0])
	pub := func(off, k int64) string {
		return `{"push":{"channel":"bench:shared","pub":{"data":{"t":` + itoa(now-int64(time.Millisecond)) + `,"k":` + itoa(k) + `},"offset":` + itoa(off) + `}}}`
	}
	var wire bytes.Buffer
	_ = ws.WriteFrame(&wire, ws.NewTextFrame([]byte(strings.Join([]string{pub(1, 0), "{}", pub(2, 1), pub(2, 1)}, "\n"))))
	_ = ws.WriteFrame(&wire, ws.NewTextFrame([]byte(pub(3, kindStorm))))
	wc.mu.Lock()
	err = in.consume(wc, wire.Bytes(), now)
	wc.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if got, dups := w.received.Load(), w.dups.Load(); got != 4 || dups != 1 || wc.cf.offset != 3 {
		t.Fatalf("received %d, %d duplicates, cursor at %d: want 4, 1, 3", got, dups, wc.cf.offset)
	}
	if sh := &w.shards[0]; sh.all.N != 3 || len(sh.last) != 2 {
		t.Fatalf("%d broadcast receipts of %d broadcasts, want 3 of 2", sh.all.N, len(sh.last))
	}
	buf := make([]byte, 64)
	n, err := syscall.Read(fds[1], buf)
	if err != nil {
		t.Fatal(err)
	}
	pong, err := ws.ReadFrame(bytes.NewReader(buf[:n]))
	if err != nil || !pong.Header.Masked || pong.Header.OpCode != ws.OpText {
		t.Fatalf("answer to the ping: %+v, %v", pong.Header, err)
	}
	if ws.Cipher(pong.Payload, pong.Header.Mask, 0); string(pong.Payload) != "{}" {
		t.Fatalf("answer to the ping: %q, want {}", pong.Payload)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// FuzzCentrifugoPub: the fast path reads a push the way a JSON decoder
// does whenever it reads one at all, and neither panics on anything a
// server sends.
func FuzzCentrifugoPub(f *testing.F) {
	for _, s := range []string{cfPubPush, cfFirstPush, cfConnectReply, cfRecoveredReply, cfErrorReply, "{}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		off, ts, k, ok := parseCentrifugoPub(b)
		_, _, _, _ = cfPubOf(b)
		if !ok || !json.Valid(b) {
			return
		}
		var m cfMessage
		if err := json.Unmarshal(b, &m); err != nil || m.Push == nil || m.Push.Pub == nil {
			t.Fatalf("fast path read %s, a decoder not: %v", b, err)
		}
		dts, dk, dok := m.Push.Pub.event()
		if !dok || m.Push.Pub.Offset != off || dts != ts || dk != k {
			t.Fatalf("%s: fast path %d %d %d, decoder %d %d %d %v", b, off, ts, k, m.Push.Pub.Offset, dts, dk, dok)
		}
	})
}

// TestCfBatchPublisher publishes a tick's capacity events to a captured
// server API: one POST to /api/batch with the key, a publish command an
// event in order, run in parallel; a reply with an error in it, or with
// fewer replies than commands, fails the tick.
func TestCfBatchPublisher(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		status      int
		wantErr     string
	}{
		{"published", `{"replies":[{"publish":{"offset":1,"epoch":"E"}},{"publish":{}}]}`, 200, ""},
		{"a command failed", `{"replies":[{"publish":{}},{"error":{"code":102,"message":"unknown channel"}}]}`, 200, "command 1 of 2: error 102 unknown channel"},
		{"replies missing", `{"replies":[{"publish":{}}]}`, 200, "1 replies to 2 commands"},
		{"refused", `{"error":{"code":101,"message":"unauthorized"}}`, 401, "401 Unauthorized"},
		{"undecodable", `<html>`, 200, "undecodable reply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got struct {
				method, path, key, ctype string
				body                     []byte
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got.method, got.path, got.key, got.ctype = r.Method, r.URL.Path, r.Header.Get("X-API-Key"), r.Header.Get("Content-Type")
				got.body, _ = io.ReadAll(r.Body)
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.reply)
			}))
			defer srv.Close()
			publish, err := cfBatchPublisher("ws://"+strings.TrimPrefix(srv.URL, "http://")+"/connection/websocket", "K")
			if err != nil {
				t.Fatal(err)
			}
			err = publish(context.Background(), []capEvent{{"bench:c0", []byte(`{"t":1,"k":2}`)}, {"bench:c1", []byte(`{"t":3,"k":4}`)}})
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("publish: %v, want an error with %q", err, tc.wantErr)
			}
			want := `{"commands":[{"publish":{"channel":"bench:c0","data":{"t":1,"k":2}}},{"publish":{"channel":"bench:c1","data":{"t":3,"k":4}}}],"parallel":true}`
			if got.method != http.MethodPost || got.path != "/api/batch" || got.key != "K" || got.ctype != "application/json" || string(got.body) != want {
				t.Errorf("request %s %s key %q type %q body %s, want POST /api/batch key K application/json %s", got.method, got.path, got.key, got.ctype, got.body, want)
			}
		})
	}
}

// FuzzCfBatchReplies: a batch reply is accepted only when it is JSON
// with exactly one reply a command, and nothing a server sends panics
// (TestCfBatchPublisher has the replies with an error refused).
func FuzzCfBatchReplies(f *testing.F) {
	for _, s := range []string{`{"replies":[{"publish":{}},{"publish":{}}]}`, `{"replies":[{"error":{"code":1,"message":"x"}},{}]}`, `{"replies":null}`, `{}`, `[]`, `{"replies":[{},{},{}]}`} {
		f.Add([]byte(s), 2)
	}
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if cfBatchReplies(b, n) != nil {
			return
		}
		var r struct {
			Replies []json.RawMessage `json:"replies"`
		}
		if err := json.Unmarshal(b, &r); err != nil || len(r.Replies) != n {
			t.Fatalf("%s accepted for %d commands: %v, %d replies", b, n, err, len(r.Replies))
		}
	})
}
