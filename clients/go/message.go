package wsbus

import "encoding/json"

// Message is any message a gateway sends; the fields a type does not
// carry stay zero. See the protocol in the project's README.
type Message struct {
	Type  string `json:"type"`
	Topic string `json:"topic"`
	// Event: its ID and seq. Subscribed: Seq is the head's.
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
	// Data is the event's payload as published: JSON when the publisher
	// sent JSON, else a JSON string.
	Data json.RawMessage `json:"data"`
	// Subscribed.
	Recovered bool    `json:"recovered"`
	Epoch     string  `json:"epoch"`
	Head      string  `json:"head"`   // the newest event ID when the subscription took effect, "0" when none
	Missed    *uint64 `json:"missed"` // events trimmed after the cursor, when known
	Acked     string  `json:"acked"`  // the subject's acknowledged cursor, on connections with a subject
	Unread    *uint64 `json:"unread"` // events after it
	// Error.
	Code    string `json:"code"`
	Message string `json:"message"`
	// Refreshed: the token's expiry, unix seconds.
	Expires int64 `json:"expires"`
}

// Event is one event handed to the application.
type Event struct {
	Topic string
	ID    string
	Seq   uint64 // 1, 2, 3, ... per topic; 0 for events written before the server numbered them
	Data  json.RawMessage
}

// Subscribed is the server's answer to a subscription (also after every
// reconnect).
type Subscribed struct {
	Topic     string
	Recovered bool    // nothing after the cursor was lost
	Epoch     string  // the partition's epoch
	Head      string  // the newest event ID, "0" when none
	Seq       uint64  // its seq
	Missed    *uint64 // when not Recovered: how many events are gone, if known
	Acked     string  // the subject's acknowledged cursor ("" without a subject)
	Unread    *uint64 // events after it
}

// Gap reports events the application will never be handed: the server
// could not prove its resume complete (Subscribed.Recovered false), or an
// event's seq skipped numbers. The application should refetch its state.
type Gap struct {
	Topic string
	// Missed is how many events are gone, when known.
	Missed *uint64
	// After and Seq bound a hole found by seq: events After+1 .. Seq-1 are
	// missing. Both zero for a gap reported by the server.
	After, Seq uint64
}
