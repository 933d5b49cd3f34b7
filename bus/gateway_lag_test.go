package bus

import (
	"math"
	"testing"

	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

func TestEventOfTopic(t *testing.T) {
	tests := []struct {
		name, payload, topic string
		want                 bool
	}{
		{"its topic", `{"type":"event","id":"1-0","topic":"user:42","data":1}`, "user:42", true},
		{"with seq", `{"type":"event","id":"1-0","seq":7,"topic":"user:42","data":1}`, "user:42", true},
		{"a longer topic", `{"type":"event","id":"1-0","topic":"user:42","data":1}`, "user:4", false},
		{"a shorter topic", `{"type":"event","id":"1-0","topic":"user:4","data":1}`, "user:42", false},
		{"the topic only in data", `{"type":"event","id":"1-0","topic":"b","data":{"x":1,"topic":"a","y":2}}`, "a", false},
		{"escaped quotes", `{"type":"event","id":"1-0","topic":"a\"b","data":1}`, `a"b`, true},
		{"not an event", `{"type":"pong"}`, "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eventOfTopic([]byte(tt.payload), streams.AppendJSONString(nil, tt.topic)); got != tt.want {
				t.Fatalf("eventOfTopic = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestFirstDropped: each subscription learns the first dropped event of
// its own topic; other frames and topics are passed over.
func TestFirstDropped(t *testing.T) {
	frame := func(topic, id string) ws.Frame {
		return ws.TextFrame(streams.AppendEvent(nil, topic, id, 1, []byte(`"x"`)))
	}
	subs := []*subscription{{topic: testTopic("a")}, {topic: testTopic("b")}, {topic: testTopic("c")}}
	dropped := []ws.Frame{
		ws.TextFrame([]byte(`{"type":"pong"}`)),
		frame("b", "5-1"),
		frame("a", "5-2"),
		frame("b", "6-0"),
		frame("zzz", "7-0"),
	}
	got := firstDropped(dropped, subs)
	want := []streams.ID{{Ms: 5, Seq: 2}, {Ms: 5, Seq: 1}, {}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("first dropped of %s = %v, want %v", subs[i].topic.name(), got[i], want[i])
		}
	}
}

func TestBefore(t *testing.T) {
	tests := []struct{ id, want streams.ID }{
		{streams.ID{Ms: 5, Seq: 3}, streams.ID{Ms: 5, Seq: 2}},
		{streams.ID{Ms: 5, Seq: 0}, streams.ID{Ms: 4, Seq: math.MaxUint64}},
		{streams.ID{}, streams.ID{}},
	}
	for _, tt := range tests {
		if got := before(tt.id); got != tt.want {
			t.Errorf("before(%v) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

// TestPagerCount: a page holds about HistoryBytes of the largest event
// seen, never fewer than one event nor more than HistoryPage.
func TestPagerCount(t *testing.T) {
	g := &Gateway{cfg: GatewayConfig{HistoryPage: 500, HistoryBytes: 256 << 10}}
	tests := []struct{ size, want int }{
		{64 << 10, 4},
		{4 << 10, 64},
		{10, 500},
		{1 << 20, 1},
		{0, 500},
	}
	for _, tt := range tests {
		p := pager{g: g, size: tt.size}
		if got := p.count(); got != tt.want {
			t.Errorf("count with events of %d bytes = %d, want %d", tt.size, got, tt.want)
		}
	}
}
