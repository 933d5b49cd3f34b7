package streams

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// eventHead starts every encoded event, so the ID of an event received over
// pub/sub can be read without decoding the JSON (see EventID).
const eventHead = `{"type":"event","id":"`

// AppendEvent appends the client message of one event to dst:
//
//	{"type":"event","id":"<id>","seq":<seq>,"topic":"<topic>","data":<data>}
//
// data is embedded as it is when it is valid JSON, otherwise as a string.
func AppendEvent(dst []byte, topic, id string, seq uint64, data []byte) []byte {
	dst = append(dst, eventHead...)
	dst = append(dst, id...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return AppendEventTail(dst, topic, data)
}

// AppendEventTail appends what follows the seq in AppendEvent's message:
//
//	,"topic":"<topic>","data":<data>}
//
// The owner's apply script, which gives each event its seq, builds the
// message from this tail (see bus/lua/apply.lua).
func AppendEventTail(dst []byte, topic string, data []byte) []byte {
	dst = append(dst, `,"topic":`...)
	dst = AppendJSONString(dst, topic)
	dst = append(dst, `,"data":`...)
	dst = AppendData(dst, data)
	return append(dst, '}')
}

// AppendData appends data as a JSON value: as it is when it is valid JSON,
// otherwise as a JSON string. JSON is UTF-8 (RFC 8259), and json.Valid
// does not check that: bytes that are not UTF-8 inside a JSON string would
// make the message an invalid text frame, which clients drop the
// connection for.
func AppendData(dst, data []byte) []byte {
	if json.Valid(data) && utf8.Valid(data) {
		return append(dst, bytes.TrimSpace(data)...)
	}
	return AppendJSONString(dst, string(data))
}

// EventID returns the ID of an event encoded by AppendEvent (as it comes
// from pub/sub), or false when payload is not one.
func EventID(payload string) (string, bool) {
	rest, ok := strings.CutPrefix(payload, eventHead)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, `"`)
	return id, ok
}

// EventSeq returns the ID and seq of an event encoded by AppendEvent, or
// false when payload is not one.
func EventSeq(payload string) (id string, seq uint64, ok bool) {
	id, ok = EventID(payload)
	if !ok {
		return "", 0, false
	}
	rest, ok := strings.CutPrefix(payload[len(eventHead)+len(id):], `","seq":`)
	if !ok {
		return "", 0, false
	}
	n := 0
	for n < len(rest) && '0' <= rest[n] && rest[n] <= '9' {
		n++
	}
	if n == 0 || n > 1 && rest[0] == '0' || n == len(rest) || rest[n] != ',' && rest[n] != '}' {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(rest[:n], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return id, seq, true
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json does.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
