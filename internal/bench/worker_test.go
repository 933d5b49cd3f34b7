package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"

	"github.com/gobwas/ws"

	"github.com/wsbus/wsbus/streams"
)

// TestParseEvent reads the bench's data back out of an event encoded the
// way the gateway encodes it, after a frame round trip.
func TestParseEvent(t *testing.T) {
	data, _ := json.Marshal(eventData{T: 1764150000123456789, K: kindUnicast})
	msg := streams.AppendEvent(nil, "bench:7", "1764150000123-4", data)
	var wire bytes.Buffer
	if err := ws.WriteFrame(&wire, ws.NewTextFrame(msg)); err != nil {
		t.Fatal(err)
	}
	op, p, err := readServerFrame(bufio.NewReader(&wire), nil)
	if err != nil || op != ws.OpText {
		t.Fatalf("frame: %v %v", op, err)
	}
	id, ts, k, ok := parseEvent(p)
	if !ok || id != "1764150000123-4" || ts != 1764150000123456789 || k != kindUnicast {
		t.Fatalf("parseEvent(%s) = %q %d %d %v", p, id, ts, k, ok)
	}
	for _, other := range []string{`{"type":"subscribed","topic":"a"}`, `{"type":"event","id":"1-1","topic":"a","data":"x"}`, `{"type":"event","id":"1-1`} {
		if _, _, _, ok := parseEvent([]byte(other)); ok {
			t.Errorf("parseEvent(%s) ok, want not an event of the bench", other)
		}
	}
}
