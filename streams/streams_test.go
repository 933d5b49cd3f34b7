package streams

import (
	"encoding/json"
	"errors"
	"hash/crc32"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestPartitionMatchesZlibCRC32(t *testing.T) {
	// Values from Python: zlib.crc32(topic.encode()) % n.
	tests := []struct {
		topic string
		n     int
		want  int
	}{
		{"demo", 64, 32},
		{"user:42", 64, 6},
		{"orders", 7, 5},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			if got := Partition(tt.topic, tt.n); got != tt.want {
				t.Fatalf("Partition(%q, %d) = %d, want %d", tt.topic, tt.n, got, tt.want)
			}
		})
	}
}

func FuzzPartitionMatchesHashCRC32(f *testing.F) {
	f.Add("user:42")
	f.Add("")
	f.Fuzz(func(t *testing.T, topic string) {
		if got, want := Partition(topic, 1<<20), int(crc32.ChecksumIEEE([]byte(topic))%(1<<20)); got != want {
			t.Fatalf("Partition(%q) = %d, hash/crc32 says %d", topic, got, want)
		}
	})
}

func BenchmarkPartition(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Partition("user:4242424242", 64)
	}
}

func TestKeys(t *testing.T) {
	k := Keys{}
	if got := k.Ingress(7); got != "wsbus:{7}:in" {
		t.Fatalf("Ingress(7) = %q", got)
	}
	k = Keys{Prefix: "app"}
	for got, want := range map[string]string{
		k.Meta():             "app:meta",
		k.Topic(3, "user:1"): "app:{3}:topic:user:1",
		k.Live(3, "user:1"):  "app:{3}:live:user:1",
		k.PartitionMeta(3):   "app:{3}:meta",
		k.Owner(12):          "app:{12}:owner",
		k.Dead(0):            "app:{0}:dead",
	} {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
}

func TestLiveTopic(t *testing.T) {
	k := Keys{Prefix: "app"}
	for _, tc := range []struct {
		p     int
		topic string
	}{{3, "user:1"}, {0, "a}:live:b"}, {63, ""}} {
		p, topic, ok := k.LiveTopic(k.Live(tc.p, tc.topic))
		if !ok || p != tc.p || topic != tc.topic {
			t.Errorf("LiveTopic(Live(%d, %q)) = %d, %q, %v", tc.p, tc.topic, p, topic, ok)
		}
	}
	for _, ch := range []string{"app:{3}:topic:user:1", "wsbus:{3}:live:a", "app:{x}:live:a", "app:{-1}:live:a", "app:{+1}:live:a", "app:{03}:live:a", "app:{}:live:a", "app:3:live:a", "appx:{3}:live:a"} {
		if _, _, ok := k.LiveTopic(ch); ok {
			t.Errorf("LiveTopic(%q) ok, want not a live channel of the bus", ch)
		}
	}
	// It runs for every live event: no allocation, whatever the prefix or
	// partition.
	for _, k := range []Keys{{}, {Prefix: "a-rather-long-application-prefix"}} {
		ch := k.Live(517, "user:42")
		if n := testing.AllocsPerRun(100, func() { _, _, _ = k.LiveTopic(ch) }); n != 0 {
			t.Errorf("LiveTopic(%q) allocates %v times", ch, n)
		}
	}
}

func TestParseID(t *testing.T) {
	tests := []struct {
		in   string
		want ID
		err  bool
	}{
		{"0", ID{}, false},
		{"0-0", ID{}, false},
		{"1718000000000-5", ID{1718000000000, 5}, false},
		{"1718000000000", ID{1718000000000, 0}, false},
		{"", ID{}, true},
		{"-1", ID{}, true},
		{"1-", ID{}, true},
		{"a-1", ID{}, true},
		{"1-2-3", ID{}, true},
		{"18446744073709551616-0", ID{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseID(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("ParseID(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
			}
			if err != nil && !errors.Is(err, ErrBadID) {
				t.Fatalf("error %v is not ErrBadID", err)
			}
		})
	}
	if !(ID{1, 9}).Less(ID{2, 0}) || !(ID{1, 1}).Less(ID{1, 2}) || (ID{1, 2}).Less(ID{1, 2}) {
		t.Fatal("Less orders IDs wrongly")
	}
}

func TestValidateTopic(t *testing.T) {
	tests := []struct {
		topic string
		ok    bool
	}{
		{"user:42", true},
		{"ünïcode/é", true},
		{strings.Repeat("a", 256), true},
		{"", false},
		{strings.Repeat("a", 257), false},
		{"a b", false},
		{"a\tb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"\xff", false},
		{"a\u00a0b", false}, // no-break space
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			if err := ValidateTopic(tt.topic); (err == nil) != tt.ok {
				t.Fatalf("ValidateTopic(%q) = %v, want ok=%v", tt.topic, err, tt.ok)
			}
		})
	}
}

func TestDecodeEntry(t *testing.T) {
	tests := []struct {
		name   string
		values map[string]any
		err    error
	}{
		{"valid", map[string]any{"topic": "t", "data": "d", "extra": "ignored"}, nil},
		{"empty data", map[string]any{"topic": "t", "data": ""}, nil},
		{"no topic", map[string]any{"data": "d"}, ErrMissingTopic},
		{"bad topic", map[string]any{"topic": "a b", "data": "d"}, ErrBadTopic},
		{"no data", map[string]any{"topic": "t"}, ErrMissingData},
		{"too large", map[string]any{"topic": "t", "data": strings.Repeat("x", 11)}, ErrTooLarge},
		{"deadline", map[string]any{"topic": "t", "data": "d", "deadline": "30000"}, nil},
		{"longest deadline", map[string]any{"topic": "t", "data": "d", "deadline": "2592000000"}, nil},
		{"deadline zero", map[string]any{"topic": "t", "data": "d", "deadline": "0"}, ErrBadDeadline},
		{"deadline negative", map[string]any{"topic": "t", "data": "d", "deadline": "-5"}, ErrBadDeadline},
		{"deadline with a sign", map[string]any{"topic": "t", "data": "d", "deadline": "+5"}, ErrBadDeadline},
		{"deadline not a number", map[string]any{"topic": "t", "data": "d", "deadline": "5s"}, ErrBadDeadline},
		{"deadline empty", map[string]any{"topic": "t", "data": "d", "deadline": ""}, ErrBadDeadline},
		{"deadline too long", map[string]any{"topic": "t", "data": "d", "deadline": "2592000001"}, ErrBadDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := DecodeEntry("1-0", tt.values, 10)
			if !errors.Is(err, tt.err) {
				t.Fatalf("DecodeEntry = %v, want %v", err, tt.err)
			}
			if err == nil && (e.Topic != tt.values["topic"] || e.Data != tt.values["data"]) {
				t.Fatalf("entry = %+v", e)
			}
			if d, ok := tt.values["deadline"].(string); err == nil && (ok != (e.Deadline > 0) || ok && strconv.FormatInt(e.Deadline, 10) != d) {
				t.Fatalf("deadline = %d, want %q", e.Deadline, d)
			}
		})
	}
}

func TestAppendEvent(t *testing.T) {
	tests := []struct {
		name, topic, data, wantData string
	}{
		{"object", "t", `{"a":[1,2]}`, `{"a":[1,2]}`},
		{"padded JSON", "t", " 42 \n", `42`},
		{"text", "t", "hi there", `"hi there"`},
		{"control characters", "t", "a\x00\n\"b", `"a\u0000\n\"b"`},
		{"invalid UTF-8", "t", "\xff", `"\ufffd"`},
		{"JSON but for its UTF-8", "t", "\"\xff\xfe\"", `"\"\ufffd\ufffd\""`},
		{"quote in topic", `a"b`, "1", `1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := AppendEvent(nil, tt.topic, "5-1", 77, []byte(tt.data))
			var m struct {
				Type, ID, Topic string
				Seq             uint64
				Data            json.RawMessage
			}
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("%s is not JSON: %v", out, err)
			}
			if m.Type != "event" || m.ID != "5-1" || m.Seq != 77 || m.Topic != tt.topic || string(m.Data) != tt.wantData {
				t.Fatalf("event = %s, want data %s", out, tt.wantData)
			}
			if id, ok := EventID(string(out)); !ok || id != "5-1" {
				t.Fatalf("EventID = %q, %v", id, ok)
			}
		})
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add("user:1", "hello", true, true, "")
	f.Add("", "x", true, true, "")
	f.Add("a b", "", true, false, "")
	f.Add("\xff", "{}", false, true, "")
	f.Add("user:1", "hello", true, true, "30000")
	f.Add("user:1", "hello", true, true, "0")
	f.Add("user:1", "hello", true, true, "+7")
	f.Add("user:1", "hello", true, true, "99999999999999999999")
	f.Fuzz(func(t *testing.T, topic, data string, hasTopic, hasData bool, deadline string) {
		values := map[string]any{}
		if hasTopic {
			values["topic"] = topic
		}
		if hasData {
			values["data"] = data
		}
		if deadline != "" {
			values["deadline"] = deadline
		}
		e, err := DecodeEntry("1-1", values, 64)
		if err != nil {
			return
		}
		if ValidateTopic(e.Topic) != nil || len(e.Data) > 64 || !utf8.ValidString(e.Topic) {
			t.Fatalf("accepted a bad entry %+v", e)
		}
		if deadline != "" && (e.Deadline < 1 || e.Deadline > MaxDeadline || strconv.FormatInt(e.Deadline, 10) != deadline) {
			t.Fatalf("accepted deadline %q as %d", deadline, e.Deadline)
		}
	})
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"0", "1-1", "1718000000000-0", "-", "1-x", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		back, err := ParseID(id.String())
		if err != nil || back != id {
			t.Fatalf("%q parsed to %v, which does not round-trip", s, id)
		}
	})
}

func FuzzAppendEvent(f *testing.F) {
	f.Add("t", "hello")
	f.Add(`a"\b`, `{"x":1}`)
	f.Add("t", "\x00\xff\u2028")
	f.Add("t", "[\"\xff\xfe\"]")
	f.Fuzz(func(t *testing.T, topic, data string) {
		out := AppendEvent(nil, topic, "1-2", 3, []byte(data))
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("not valid JSON in UTF-8: %q", out)
		}
		if id, ok := EventID(string(out)); !ok || id != "1-2" {
			t.Fatalf("EventID(%q) = %q, %v", out, id, ok)
		}
		if id, seq, ok := EventSeq(string(out)); !ok || id != "1-2" || seq != 3 {
			t.Fatalf("EventSeq(%q) = %q, %d, %v", out, id, seq, ok)
		}
	})
}

// FuzzEventSeq: any payload (pub/sub carries what anyone with access to
// Redis publishes) is either refused or read as the event AppendEvent
// would have written with that ID and seq.
func FuzzEventSeq(f *testing.F) {
	f.Add(string(AppendEvent(nil, "t", "1-2", 3, []byte(`"x"`))))
	f.Add(`{"type":"event","id":"1-2","seq":18446744073709551616,"topic":"t","data":1}`)
	f.Add(`{"type":"event","id":"1-2","seq":-1}`)
	f.Add(`{"type":"event","id":"1-2"`)
	f.Add(`{"type":"event","id":"","seq":00000001}`)
	f.Fuzz(func(t *testing.T, payload string) {
		id, seq, ok := EventSeq(payload)
		if !ok {
			return
		}
		head := string(AppendEvent(nil, "", id, seq, nil))
		head = head[:strings.Index(head, `,"topic"`)]
		if !strings.HasPrefix(payload, head) {
			t.Fatalf("EventSeq(%q) = %q, %d: not the head %q", payload, id, seq, head)
		}
	})
}

// BenchmarkAppendEvent: the owner encodes each event once (its data
// checked as JSON and as UTF-8), for every subscriber. Text of ASCII and
// text with an accented letter every six bytes, the slow case of the
// UTF-8 check.
func BenchmarkAppendEvent(b *testing.B) {
	for _, bench := range []struct {
		name string
		data string
	}{
		{"ascii-100B", `{"text":"` + strings.Repeat("hello ", 15) + `"}`},
		{"accented-1KB", `{"text":"` + strings.Repeat("héllo ", 146) + `"}`},
		{"accented-16KB", `{"text":"` + strings.Repeat("héllo ", 2340) + `"}`},
	} {
		b.Run(bench.name, func(b *testing.B) {
			data := []byte(bench.data)
			buf := make([]byte, 0, len(data)+128)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				buf = AppendEvent(buf[:0], "user:42", "1718000000000-1", 42, data)
			}
		})
	}
}
