package bus

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	wsbus "github.com/wsbus/wsbus/clients/go"
	"github.com/wsbus/wsbus/streams"
	"github.com/wsbus/wsbus/ws"
)

// clientMessage is a message from a client; unknown fields are ignored.
type clientMessage struct {
	Type  string          `json:"type"`
	Topic string          `json:"topic"`
	Since *string         `json:"since"` // nil: only new events
	Seq   json.RawMessage `json:"seq"`   // the seq of since; checked by parseSeq
	Epoch string          `json:"epoch"`
	Token string          `json:"token"` // refresh
	ID    string          `json:"id"`    // ack
}

// parseSeq reads a client's seq: a JSON number without sign, fraction or
// exponent, or a string of its digits (as a query parameter gives it; see
// streams.ParseSeq). ok is false when it is absent or null.
func parseSeq(raw []byte) (seq uint64, ok bool, err error) {
	s := string(raw)
	if s == "" || s == "null" {
		return 0, false, nil
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	if seq, err = streams.ParseSeq(s); err != nil {
		return 0, false, err
	}
	return seq, true, nil
}

// ServerMessage is any message a gateway sends, as the Go client decodes
// it: the client package's Message, so that the two cannot drift apart.
type ServerMessage = wsbus.Message

// sinceAcked is the since of a subscription that resumes from its
// subject's acknowledged cursor.
const sinceAcked = "acked"

// Error codes of {"type":"error"} replies.
const (
	codeBadRequest        = "bad_request"
	codeUnknownType       = "unknown_type"
	codeBadTopic          = "bad_topic"
	codeBadSince          = "bad_since"
	codeBadSeq            = "bad_seq"
	codeAlreadySubscribed = "already_subscribed"
	codeNotSubscribed     = "not_subscribed"
	codeTooMany           = "too_many_subscriptions"
	codeUnavailable       = "unavailable"
	codeForbidden         = "forbidden"
	codeUnauthorized      = "unauthorized"
	codeNoSubject         = "no_subject"
	codeBadID             = "bad_id"
	codeTooManyAcks       = "too_many_acks"
)

// errBadMessage is returned by decodeClientMessage for anything that is not
// a JSON object with a string "type".
var errBadMessage = errors.New("bus: message is not a JSON object with a type")

// badFieldError is returned by decodeClientMessage for a JSON object with
// a member of the wrong type.
type badFieldError struct{ field, want string }

func (e badFieldError) Error() string {
	return "bus: " + e.field + " must be a JSON " + e.want
}

// decodeClientMessage decodes one client message; it is fuzzed.
func decodeClientMessage(b []byte) (clientMessage, error) {
	var m clientMessage
	err := json.Unmarshal(b, &m)
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" && typeErr.Field != "type" {
		want := typeErr.Type.Kind().String()
		if want == "ptr" {
			want = typeErr.Type.Elem().Kind().String()
		}
		return clientMessage{}, badFieldError{typeErr.Field, want}
	}
	if err != nil || m.Type == "" {
		return clientMessage{}, errBadMessage
	}
	return m, nil
}

// clientText is err's text for a client: without the package's prefix.
func clientText(err error) string {
	return strings.TrimPrefix(err.Error(), "bus: ")
}

// Subscribed is the answer to a subscription, as AppendSubscribed encodes
// it.
type Subscribed struct {
	Topic     string
	Recovered bool
	Epoch     string
	// Head is the topic's newest event ID when the subscription took
	// effect (zero when none) and HeadSeq its seq: the subscriber's cursor
	// before its first event.
	Head    streams.ID
	HeadSeq uint64
	// Missed is sent when MissedKnown (see streams.Resume).
	Missed      uint64
	MissedKnown bool
	// Acked and Unread, sent when HasAcked (a connection with a subject),
	// are the subject's acknowledged cursor and how many events follow it.
	Acked    streams.ID
	Unread   uint64
	HasAcked bool
}

// AppendSubscribed appends the "subscribed" answer to a subscription:
// {"type":"subscribed","topic":…,"recovered":…,"epoch":…,"head":…,"seq":…}
// and "missed" when it is known, "acked" and "unread" on a connection with
// a subject.
func AppendSubscribed(dst []byte, s Subscribed) []byte {
	dst = append(dst, `{"type":"subscribed","topic":`...)
	dst = streams.AppendJSONString(dst, s.Topic)
	if s.Recovered {
		dst = append(dst, `,"recovered":true,"epoch":`...)
	} else {
		dst = append(dst, `,"recovered":false,"epoch":`...)
	}
	dst = streams.AppendJSONString(dst, s.Epoch)
	dst = append(dst, `,"head":"`...)
	dst = appendID(dst, s.Head)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, s.HeadSeq, 10)
	if s.MissedKnown {
		dst = append(dst, `,"missed":`...)
		dst = strconv.AppendUint(dst, s.Missed, 10)
	}
	if s.HasAcked {
		dst = append(dst, `,"acked":"`...)
		dst = appendID(dst, s.Acked)
		dst = append(dst, `","unread":`...)
		dst = strconv.AppendUint(dst, s.Unread, 10)
	}
	return append(dst, '}')
}

// appendID appends id as Redis writes it, "0" for the zero ID.
func appendID(dst []byte, id streams.ID) []byte {
	if id.IsZero() {
		return append(dst, '0')
	}
	dst = strconv.AppendUint(dst, id.Ms, 10)
	dst = append(dst, '-')
	return strconv.AppendUint(dst, id.Seq, 10)
}

func appendUnsubscribed(dst []byte, topic string) []byte {
	dst = append(dst, `{"type":"unsubscribed","topic":`...)
	dst = streams.AppendJSONString(dst, topic)
	return append(dst, '}')
}

func appendError(dst []byte, code, topic, message string) []byte {
	dst = append(dst, `{"type":"error","code":`...)
	dst = streams.AppendJSONString(dst, code)
	if topic != "" {
		dst = append(dst, `,"topic":`...)
		dst = streams.AppendJSONString(dst, topic)
	}
	dst = append(dst, `,"message":`...)
	dst = streams.AppendJSONString(dst, message)
	return append(dst, '}')
}

func appendRefreshed(dst []byte, expires time.Time) []byte {
	dst = append(dst, `{"type":"refreshed","expires":`...)
	dst = strconv.AppendInt(dst, expires.Unix(), 10)
	return append(dst, '}')
}

var pongMessage = []byte(`{"type":"pong"}`)

// eventFrame encodes a history event as a frame with one allocation, the
// frame's own: the data and the event JSON are built in a pooled scratch
// buffer (data first, the event after it).
func eventFrame(topic string, e streams.Event) ws.Frame {
	bp := scratch.Get().(*[]byte)
	buf := append((*bp)[:0], e.Data...)
	n := len(buf)
	buf = streams.AppendEvent(buf, topic, e.ID, e.Seq, buf[:n])
	frame := ws.TextFrame(buf[n:])
	*bp = buf
	scratch.Put(bp)
	return frame
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
