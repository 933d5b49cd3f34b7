package bus

import (
	"bytes"
	"encoding/json"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbus/wsbus/streams"
)

func TestDecodeClientMessage(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
		since    *string
	}{
		{"subscribe", `{"type":"subscribe","topic":"a","since":"1-0","epoch":"e"}`, true, strp("1-0")},
		{"subscribe without since", `{"type":"subscribe","topic":"a"}`, true, nil},
		{"since null", `{"type":"subscribe","topic":"a","since":null}`, true, nil},
		{"extra fields", `{"type":"ping","x":[1]}`, true, nil},
		{"ack", `{"type":"ack","topic":"a","id":"1718000000000-1"}`, true, nil},
		{"ack with a numeric id", `{"type":"ack","topic":"a","id":5}`, false, nil},
		{"since acked", `{"type":"subscribe","topic":"a","since":"acked"}`, true, strp("acked")},
		{"no type", `{"topic":"a"}`, false, nil},
		{"type not a string", `{"type":1}`, false, nil},
		{"array", `[]`, false, nil},
		{"garbage", `{`, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := decodeClientMessage([]byte(tt.in))
			if (err == nil) != tt.ok {
				t.Fatalf("decode(%s) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if (m.Since == nil) != (tt.since == nil) || m.Since != nil && *m.Since != *tt.since {
				t.Fatalf("since = %v, want %v", m.Since, tt.since)
			}
		})
	}
}

func strp(s string) *string { return &s }

func u64p(n uint64) *uint64 { return &n }

func TestParseSeq(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		seq     uint64
		ok, bad bool
	}{
		{raw: ""}, {raw: "null"},
		{raw: "0", ok: true}, {raw: "41", seq: 41, ok: true}, {raw: `"41"`, seq: 41, ok: true},
		{raw: "18446744073709551615", seq: 1<<64 - 1, ok: true},
		{raw: "-1", bad: true}, {raw: "1.5", bad: true}, {raw: "1e3", bad: true}, {raw: "+1", bad: true},
		{raw: "01", bad: true}, {raw: `""`, bad: true}, {raw: "18446744073709551616", bad: true},
		{raw: "{}", bad: true}, {raw: "true", bad: true}, {raw: `"x"`, bad: true},
	} {
		seq, ok, err := parseSeq([]byte(tc.raw))
		if seq != tc.seq || ok != tc.ok || (err != nil) != tc.bad {
			t.Errorf("parseSeq(%s) = %d, %v, %v; want %d, %v, bad %v", tc.raw, seq, ok, err, tc.seq, tc.ok, tc.bad)
		}
	}
}

// TestServerMessagesDecode: what the gateway writes is JSON that a client
// decoding into ServerMessage reads back field for field.
func TestServerMessagesDecode(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want ServerMessage
	}{
		{AppendSubscribed(nil, Subscribed{Topic: `we"ird`, Recovered: true, Epoch: "e1", Head: streams.ID{Ms: 17, Seq: 2}, HeadSeq: 42}),
			ServerMessage{Type: "subscribed", Topic: `we"ird`, Recovered: true, Epoch: "e1", Head: "17-2", Seq: 42}},
		{AppendSubscribed(nil, Subscribed{Topic: "t"}), ServerMessage{Type: "subscribed", Topic: "t", Head: "0"}},
		{AppendSubscribed(nil, Subscribed{Topic: "t", Head: streams.ID{Ms: 9}, HeadSeq: 1300, MissedKnown: true, Missed: 250}),
			ServerMessage{Type: "subscribed", Topic: "t", Head: "9-0", Seq: 1300, Missed: u64p(250)}},
		{AppendSubscribed(nil, Subscribed{Topic: "t", MissedKnown: true}), ServerMessage{Type: "subscribed", Topic: "t", Head: "0", Missed: u64p(0)}},
		{appendUnsubscribed(nil, "t\\"), ServerMessage{Type: "unsubscribed", Topic: "t\\"}},
		{appendError(nil, codeBadTopic, "", "bad \"topic\"\n"), ServerMessage{Type: "error", Code: codeBadTopic, Message: "bad \"topic\"\n"}},
		{appendError(nil, codeBadTopic, "t", "m"), ServerMessage{Type: "error", Code: codeBadTopic, Topic: "t", Message: "m"}},
		{appendRefreshed(nil, time.Unix(1764150000, 0)), ServerMessage{Type: "refreshed", Expires: 1764150000}},
		{streams.AppendEvent(nil, "t", "1-2", 7, []byte(`{"a":1}`)), ServerMessage{Type: "event", Topic: "t", ID: "1-2", Seq: 7, Data: json.RawMessage(`{"a":1}`)}},
		{pongMessage, ServerMessage{Type: "pong"}},
	} {
		var got ServerMessage
		if err := json.Unmarshal(tc.b, &got); err != nil {
			t.Errorf("%s: %v", tc.b, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s decodes to %+v, want %+v", tc.b, got, tc.want)
		}
	}
}

// FuzzDecodeClientMessage: any input decodes or is refused, never panics,
// and whatever decodes has a type.
func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","topic":"user:42","since":"1718000000000-0","epoch":"k3v9"}`,
		`{"type":"unsubscribe","topic":"a"}`, `{"type":"ping"}`, `{}`, `null`, `"x"`, `{"type":"subscribe","since":5}`,
		`{"type":"subscribe","topic":"user:42","since":"1718000000000-0","seq":41,"epoch":"k3v9"}`,
		`{"type":"subscribe","topic":"t","since":"0","seq":-1}`, `{"type":"subscribe","topic":"t","seq":1.5}`,
		`{"type":"subscribe","topic":"t","seq":"12"}`, `{"type":"subscribe","topic":"t","seq":1e3}`,
		`{"type":"subscribe","topic":"t","seq":18446744073709551616}`, `{"type":"subscribe","topic":"t","seq":{}}`,
		`{"type":"ack","topic":"user:42","id":"1718000000000-1"}`, `{"type":"ack","topic":"a","id":"0"}`,
		`{"type":"ack","topic":"a","id":null}`, `{"type":"ack","id":["1-1"]}`, `{"type":"ack","topic":"a","id":"1-1","id":"2-2"}`,
		`{"type":"subscribe","topic":"user:42","since":"acked"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeClientMessage(b)
		if err == nil && m.Type == "" {
			t.Fatalf("accepted %q without a type", b)
		}
		if err != nil {
			return
		}
		if m.Type == "ack" {
			// What the gateway checks before queueing an ack must not
			// panic, and an ID it accepts prints back as a Redis ID.
			if id, err := streams.ParseID(m.ID); err == nil {
				if _, err := streams.ParseID(id.String()); err != nil {
					t.Fatalf("ID %q reformats to %q, which does not parse", m.ID, id.String())
				}
			}
			_ = streams.ValidateTopic(m.Topic)
		}
		// A seq is accepted only as a JSON integer that round-trips.
		seq, ok, err := parseSeq(m.Seq)
		if err == nil && ok {
			var n json.Number
			if json.Unmarshal(m.Seq, &n) == nil && n.String() != strconv.FormatUint(seq, 10) {
				t.Fatalf("seq %s accepted as %d", m.Seq, seq)
			}
		}
	})
}

func TestEventFrame(t *testing.T) {
	for _, data := range []string{`{"a":1}`, "plain", "", strings.Repeat("x", 5000)} {
		f := eventFrame("t", streams.Event{ID: "1-2", Seq: 9, Data: data})
		want := streams.AppendEvent(nil, "t", "1-2", 9, []byte(data))
		if got := f.Payload(); string(got) != string(want) {
			t.Fatalf("frame payload %q, want %q", got, want)
		}
	}
}

func BenchmarkEventFrame(b *testing.B) {
	b.ReportAllocs()
	e := streams.Event{ID: "1718000000000-1", Data: `{"text":"hi"}`}
	for b.Loop() {
		_ = eventFrame("user:42", e)
	}
}

// FuzzQueryValue: queryValue reads a handshake's query as url.ParseQuery
// would, first value of a key, for any request target.
func FuzzQueryValue(f *testing.F) {
	f.Add([]byte("/v1/ws?topic=a&since=0"), "topic")
	f.Add([]byte("/v1/ws?topic=bench%3Ashared&epoch=x+y"), "topic")
	f.Add([]byte("/v1/ws?%74opic=a&topic=b"), "topic")
	f.Add([]byte("/v1/ws?since=%zz&since=1-1"), "since")
	f.Add([]byte("/v1/ws?a;b=c&topic"), "topic")
	f.Fuzz(func(t *testing.T, uri []byte, key string) {
		got, ok := queryValue(uri, key)
		_, raw, _ := bytes.Cut(uri, []byte("?"))
		vals, _ := url.ParseQuery(string(raw))
		want, wantOK := vals[key]
		if ok != wantOK || ok && got != want[0] {
			t.Fatalf("queryValue(%q, %q) = %q, %v; url.ParseQuery has %q", uri, key, got, ok, want)
		}
	})
}
