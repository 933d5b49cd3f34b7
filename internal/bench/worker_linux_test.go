package bench

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/wsbus/wsbus/internal/testutil"
)

// script is a fake server's answers, one list per upgrade in turn: the
// first answer is sent at once, each later one after a message from the
// client; after the last the server holds the connection if it was
// "subscribed" and closes it otherwise.
type script [][]string

func (sc script) serve(t *testing.T) (url string, upgrades *atomic.Int32) {
	upgrades = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		n := int(upgrades.Add(1))
		if n > len(sc) {
			t.Errorf("upgrade %d: the script has %d", n, len(sc))
			return
		}
		answers := sc[n-1]
		for i, a := range answers {
			if i > 0 {
				if _, _, err := wsutil.ReadClientData(conn); err != nil {
					return
				}
			}
			if err := wsutil.WriteServerText(conn, []byte(a)); err != nil {
				return
			}
		}
		if strings.Contains(answers[len(answers)-1], `"subscribed"`) {
			_, _, _ = wsutil.ReadClientData(conn) // until the client goes
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http"), upgrades
}

// scriptWorker is a worker with one connection to topic (and own, when
// not "") of the server at url.
func scriptWorker(t *testing.T, url, topic, own string) (*worker, *wconn) {
	w := &worker{report: Report{Last: map[int64]uint64{}}, dialers: []ws.Dialer{{}}}
	w.job.URL = url
	var err error
	if w.in, err = newInbox(w); err != nil {
		t.Fatal(err)
	}
	wc := &wconn{topic: topic, own: own, dialer: &w.dialers[0], shard: &w.shards[0], fd: -1}
	w.conns = []*wconn{wc}
	t.Cleanup(w.reset)
	return w, wc
}

const unavailable = `{"type":"error","code":"unavailable","topic":"%s","message":"the bus is unavailable; retry"}`

func subscribed(topic string, recovered bool) string {
	r := "false"
	if recovered {
		r = "true"
	}
	return `{"type":"subscribed","topic":"` + topic + `","recovered":` + r + `}`
}

// TestResumeTriesAgain: a resume the server answers "unavailable" (a
// partition changing hands) is tried again, as a client would, and counts
// as resumed once an answer is "subscribed"; a first connect is not tried
// again.
func TestResumeTriesAgain(t *testing.T) {
	shared := "bench:shared"
	url, upgrades := script{
		{strings.Replace(unavailable, "%s", shared, 1)},
		{strings.Replace(unavailable, "%s", shared, 1)},
		{subscribed(shared, true)},
	}.serve(t)
	w, wc := scriptWorker(t, url, shared, "")
	slots := make(chan struct{}, 1)
	slots <- struct{}{}
	if _, retried, err := w.connectOrRetry(wc, false, slots); err == nil || retried != 0 {
		t.Fatalf("a first connect answered unavailable: err %v after %d tries again, want an error and none", err, retried)
	}
	recovered, retried, err := w.connectOrRetry(wc, true, slots)
	if err != nil || !recovered || retried != 1 {
		t.Fatalf("resume: recovered %v after %d tries again, err %v; want recovered after 1", recovered, retried, err)
	}
	if n := upgrades.Load(); n != 3 {
		t.Fatalf("%d upgrades, want 3", n)
	}
	if len(slots) != 1 {
		t.Fatalf("%d handshake slots held after the tries, want the 1 it was called with", len(slots))
	}
}

// TestResumeTriedAgainStaysNotRecovered: a try whose first topic was
// answered recovered:false and whose second was then refused has moved
// the first topic's cursor; the try after it is answered recovered:true
// from there, and the resume still counts as not recovered.
func TestResumeTriedAgainStaysNotRecovered(t *testing.T) {
	shared, own := "bench:shared", "bench:own:1"
	url, _ := script{
		{subscribed(shared, false), strings.Replace(unavailable, "%s", own, 1)},
		{subscribed(shared, true), subscribed(own, true)},
	}.serve(t)
	w, _ := scriptWorker(t, url, shared, own)
	go w.connectAll(true)
	testutil.Eventually(t, testutil.Wait, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.report.Resumed+w.report.Failed < 1 {
			return errors.New("the connection has not resumed or failed")
		}
		return nil
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.report; r.Resumed != 1 || r.NotRecovered != 1 || r.Retried != 1 || r.Failed != 0 {
		t.Fatalf("resumed %d, not recovered %d, tried again %d, failed %d; want 1, 1, 1, 0 (errors %q)", r.Resumed, r.NotRecovered, r.Retried, r.Failed, r.Errors)
	}
}

// TestFailedConnectReportsItsOwnTopic: a connection that fails to connect
// reports its own topic (the second, with a pair), so that unicast does
// not publish to a topic no one could receive and count it lost.
func TestFailedConnectReportsItsOwnTopic(t *testing.T) {
	shared := "bench:shared"
	url, _ := script{{strings.Replace(unavailable, "%s", shared, 1)}}.serve(t)
	w, _ := scriptWorker(t, url, shared, "bench:own:7")
	w.connectAll(false)
	if w.report.Failed != 1 || !slices.Equal(w.report.FailedOwn, []string{"bench:own:7"}) {
		t.Fatalf("failed %d, own topics of failed connections %q; want 1 and [bench:own:7]", w.report.Failed, w.report.FailedOwn)
	}
}
