package bus

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/wsbus/wsbus/streams"
)

// clientMessage is a message from a client; unknown fields are ignored.
type clientMessage struct {
	Type  string  `json:"type"`
	Topic string  `json:"topic"`
	Since *string `json:"since"` // nil: only new events
	Epoch string  `json:"epoch"`
	Token string  `json:"token"` // refresh
	ID    string  `json:"id"`    // ack
}

// ServerMessage is any message a gateway sends, as a Go client decodes it
// (wsbus tail, the tests); the fields a type does not carry stay zero.
// Data is the event's payload as published: JSON when the publisher sent
// JSON, else a JSON string.
type ServerMessage struct {
	Type      string          `json:"type"`
	Topic     string          `json:"topic"`
	ID        string          `json:"id"`
	Data      json.RawMessage `json:"data"`
	Recovered bool            `json:"recovered"`
	Epoch     string          `json:"epoch"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	Expires   int64           `json:"expires"` // refreshed: the token's expiry, unix seconds
	Acked     string          `json:"acked"`   // subscribed, on a connection with a subject
	Unread    int64           `json:"unread"`  // subscribed, on a connection with a subject
}

// Error codes of {"type":"error"} replies.
const (
	codeBadRequest        = "bad_request"
	codeUnknownType       = "unknown_type"
	codeBadTopic          = "bad_topic"
	codeBadSince          = "bad_since"
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

// decodeClientMessage decodes one client message; it is fuzzed.
func decodeClientMessage(b []byte) (clientMessage, error) {
	var m clientMessage
	if err := json.Unmarshal(b, &m); err != nil || m.Type == "" {
		return clientMessage{}, errBadMessage
	}
	return m, nil
}

// AppendSubscribed appends the "subscribed" answer to a subscription:
// {"type":"subscribed","topic":…,"recovered":…,"epoch":…}.
func AppendSubscribed(dst []byte, topic string, recovered bool, epoch string) []byte {
	dst = append(dst, `{"type":"subscribed","topic":`...)
	dst = streams.AppendJSONString(dst, topic)
	if recovered {
		dst = append(dst, `,"recovered":true,"epoch":`...)
	} else {
		dst = append(dst, `,"recovered":false,"epoch":`...)
	}
	dst = streams.AppendJSONString(dst, epoch)
	return append(dst, '}')
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
