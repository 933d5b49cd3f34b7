package streams

import (
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

// Entry is a decoded ingress entry.
type Entry struct {
	ID    string
	Topic string
	Data  string
}

// DecodeEntry checks the fields of an ingress entry as go-redis returns them.
// maxData is the payload limit in bytes (DefaultMaxData when zero). Fields
// other than topic and data are ignored.
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
	return Entry{ID: id, Topic: topic, Data: data}, nil
}
