package streams

import "errors"

// Errors returned when a topic, payload or entry is refused. The owner
// pipeline records their text as the reason of a dead-letter entry.
var (
	// ErrBadTopic means a topic is empty, longer than MaxTopicLen, not UTF-8,
	// or holds a space or control character.
	ErrBadTopic = errors.New("streams: invalid topic")
	// ErrMissingTopic means an ingress entry has no topic field.
	ErrMissingTopic = errors.New("streams: missing topic")
	// ErrMissingData means an ingress entry has no data field.
	ErrMissingData = errors.New("streams: missing data")
	// ErrTooLarge means a payload is over the configured size limit.
	ErrTooLarge = errors.New("streams: data too large")
	// ErrBadDeadline means an ingress entry's deadline is not a decimal
	// count of milliseconds from 1 to MaxDeadline.
	ErrBadDeadline = errors.New("streams: invalid deadline")
	// ErrBadID means a string is not a stream ID ("<ms>-<seq>", "<ms>" or "0").
	ErrBadID = errors.New("streams: invalid stream ID")
	// ErrBadSeq means a string is not a seq (digits, no sign or leading zero).
	ErrBadSeq = errors.New("streams: invalid seq")
	// ErrNotMigrated means the bus has no <prefix>:meta partitions yet.
	ErrNotMigrated = errors.New("streams: bus not migrated (run wsbus migrate; gateways serving it write its meta back within a second of a Redis data loss)")
)
