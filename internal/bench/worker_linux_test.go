package bench

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// TestResumeTriesAgain: a resume the server answers "unavailable" (a
// partition changing hands) is tried again, as a client would, and counts
// as resumed once an answer is "subscribed"; a first connect is not tried
// again.
func TestResumeTriesAgain(t *testing.T) {
	var upgrades atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		answer := `{"type":"subscribed","topic":"bench:shared","recovered":true}`
		if upgrades.Add(1) <= 2 {
			answer = `{"type":"error","code":"unavailable","topic":"bench:shared","message":"the bus is unavailable; retry"}`
		}
		_ = wsutil.WriteServerText(conn, []byte(answer))
		if strings.Contains(answer, "error") {
			return
		}
		_, _, _ = wsutil.ReadClientData(conn) // until the client goes
	}))
	defer srv.Close()

	w := &worker{report: Report{Last: map[int64]uint64{}}, dialers: []ws.Dialer{{}}}
	w.job.URL = "ws" + strings.TrimPrefix(srv.URL, "http")
	var err error
	if w.in, err = newInbox(w); err != nil {
		t.Fatal(err)
	}
	wc := &wconn{topic: "bench:shared", dialer: &w.dialers[0], shard: &w.shards[0], fd: -1}

	if _, retried, err := w.connectOrRetry(wc, false); err == nil || retried != 0 {
		t.Fatalf("a first connect answered unavailable: err %v after %d tries again, want an error and none", err, retried)
	}
	recovered, retried, err := w.connectOrRetry(wc, true)
	if err != nil || !recovered || retried != 1 {
		t.Fatalf("resume: recovered %v after %d tries again, err %v; want recovered after 1", recovered, retried, err)
	}
	if n := upgrades.Load(); n != 3 {
		t.Fatalf("%d upgrades, want 3", n)
	}
	w.reset()
}
