package bench

import (
	"bytes"
	"encoding/json"
	"syscall"
	"testing"

	"github.com/gobwas/ws"
)

// TestSwitchTopic switches a connection on a socket pair: an unsubscribe
// of its topic and a subscribe of another go out as masked client frames,
// and until both are answered it does not switch again.
func TestSwitchTopic(t *testing.T) {
	w, wc := newSoakTestConn(t, 2, "100-5", 5)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fds[0]); _ = syscall.Close(fds[1]) })
	wc.fd = fds[0]
	if !w.switchTopic(wc) {
		t.Fatal("switchTopic: false for a settled connection")
	}
	buf := make([]byte, 4096)
	n, err := syscall.Read(fds[1], buf)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(buf[:n])
	var got []map[string]string
	for r.Len() > 0 {
		h, err := ws.ReadHeader(r)
		if err != nil || !h.Masked || h.OpCode != ws.OpText {
			t.Fatalf("frame header %+v, %v: want a masked text frame", h, err)
		}
		p := make([]byte, h.Length)
		_, _ = r.Read(p)
		ws.Cipher(p, h.Mask, 0)
		var m map[string]string
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		got = append(got, m)
	}
	sc := wc.soak
	if len(got) != 2 || got[0]["type"] != "unsubscribe" || got[0]["topic"] != "soak:2" ||
		got[1]["type"] != "subscribe" || got[1]["topic"] != soakTopic(sc.topic) || sc.topic == 2 {
		t.Fatalf("sent %v, now on %s", got, soakTopic(sc.topic))
	}
	if !sc.pending || sc.span != nil || sc.leaving == nil || sc.leaving.Topic != 2 || sc.leaving.Open ||
		wc.topic != soakTopic(sc.topic) || wc.cursor.ID != "" {
		t.Fatalf("after the switch: pending %v, span %v, leaving %+v, topic %s, cursor %+v", sc.pending, sc.span, sc.leaving, wc.topic, wc.cursor)
	}
	w.churn(3)
	if w.switchTopic(wc) || w.soak.churned.Load() != 0 {
		t.Fatal("switched again before the first switch was answered")
	}
}
