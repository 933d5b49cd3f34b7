package streams

import (
	"strconv"
	"unicode"
	"unicode/utf8"
)

// MaxTopicLen is the longest topic in bytes.
const MaxTopicLen = 256

// DefaultMaxData is the default payload limit: 64 KiB.
const DefaultMaxData = 64 << 10

// ValidateTopic reports whether topic is 1–256 bytes of UTF-8 without spaces
// or control characters.
func ValidateTopic(topic string) error {
	if len(topic) == 0 || len(topic) > MaxTopicLen || !utf8.ValidString(topic) {
		return ErrBadTopic
	}
	for _, r := range topic {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return ErrBadTopic
		}
	}
	return nil
}

// MaxDeadline is the longest deadline in milliseconds: 30 days. A longer
// one is refused rather than kept in Redis for longer than any history.
const MaxDeadline = 30 * 24 * 3600 * 1000

// Entry is a decoded ingress entry.
type Entry struct {
	ID    string
	Topic string
	Data  string
	// Deadline, in milliseconds after the time in ID, by which some
	// subject must have acknowledged the event, or it is escalated; 0 for
	// none.
	Deadline int64
}

// DecodeEntry checks the fields of an ingress entry as go-redis returns them.
// maxData is the payload limit in bytes (DefaultMaxData when zero). An
// optional deadline must be a decimal count of milliseconds, 1 to
// MaxDeadline, without sign or leading zero. Other fields are ignored.
func DecodeEntry(id string, values map[string]any, maxData int) (Entry, error) {
	if maxData <= 0 {
		maxData = DefaultMaxData
	}
	topic, ok := values["topic"].(string)
	if !ok {
		return Entry{}, ErrMissingTopic
	}
	if err := ValidateTopic(topic); err != nil {
		return Entry{}, err
	}
	data, ok := values["data"].(string)
	if !ok {
		return Entry{}, ErrMissingData
	}
	if len(data) > maxData {
		return Entry{}, ErrTooLarge
	}
	e := Entry{ID: id, Topic: topic, Data: data}
	if v, ok := values["deadline"]; ok {
		s, _ := v.(string)
		d, err := strconv.ParseInt(s, 10, 64)
		if err != nil || d < 1 || d > MaxDeadline || s[0] == '+' || s[0] == '0' {
			return Entry{}, ErrBadDeadline
		}
		e.Deadline = d
	}
	return e, nil
}
