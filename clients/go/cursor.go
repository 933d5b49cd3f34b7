package wsbus

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Cursor is where a subscriber stands in one topic: the last event handed
// to the application (or, before the first, the head the server gave),
// that event's seq, and the partition epoch. It is the whole of the
// resume protocol on the client's side: Subscribed and Event keep it, and
// Resume says what to send on the next connection. The zero Cursor has
// seen nothing (subscribe for new events only); a Cursor{ID: "0"} asks
// for everything retained, Cursor{ID: "acked"} for what follows the
// subject's acknowledged cursor, and Cursor{ID: someID} for what follows
// that event. Not safe for concurrent use.
type Cursor struct {
	ID    string `json:"id,omitempty"`    // "" before the first subscribed
	Seq   uint64 `json:"seq,omitempty"`   // the seq of ID
	Epoch string `json:"epoch,omitempty"` // the epoch the server gave

	// unsure is set after a resume the server could not prove complete:
	// the next event's seq is taken as it comes instead of checked.
	unsure bool
	// floor is the ID a cursor had before the stream went back below it:
	// events at or below it were handed over already and are dropped,
	// though the cursor resumes from the head. "" for none.
	floor string
}

// Resume returns the since, seq and epoch to send with a subscribe: none
// (only new events) for a cursor that has seen nothing. hasSeq is false
// when the cursor's seq is not known.
func (c *Cursor) Resume() (since string, seq uint64, hasSeq bool, epoch string) {
	return c.ID, c.Seq, c.ID != "" && c.ID != "acked" && (c.Seq > 0 || c.ID == "0"), c.Epoch
}

// Subscribe returns the subscribe message for topic that resumes from c:
// with its since, seq and epoch, or none of them for a cursor that has
// seen nothing (only new events).
func (c *Cursor) Subscribe(topic string) []byte {
	m := map[string]any{"type": "subscribe", "topic": topic}
	since, seq, hasSeq, epoch := c.Resume()
	if since != "" {
		m["since"] = since
	}
	if hasSeq {
		m["seq"] = seq
	}
	if epoch != "" {
		m["epoch"] = epoch
	}
	b, _ := json.Marshal(m)
	return b
}

// Subscribed takes the server's answer to a subscription. A cursor that
// has seen nothing takes the head, so a drop before the first event
// misses nothing; a cursor of "acked" takes the subject's acknowledged
// cursor. It returns a Gap when the server could not prove the resume
// complete.
func (c *Cursor) Subscribed(m *Message) *Gap {
	if !m.Recovered && c.ID != "" && c.ID != "acked" {
		// The cursor may belong to data that was lost: the server sends
		// everything it retains. What sorts at or below the cursor is
		// what Redis kept of events already handed over (an older
		// snapshot, a replica that lagged), dropped as any duplicate:
		// never twice, never out of order.
		switch {
		case idLess(m.Head, c.ID):
			// The stream went back (or expired: head "0"): the head is
			// the cursor now, so that the next resume can be trusted (the
			// server trusts no cursor past the head), and the old one a
			// floor: what a new owner applies from ingress between the
			// two was handed over already.
			if idLess(c.floor, c.ID) {
				c.floor = c.ID
			}
			c.ID, c.Seq = m.Head, m.Seq
		case c.Epoch != "" && m.Epoch != c.Epoch:
			c.Seq = 0 // it belongs to the old data: not sent again
		}
	}
	c.Epoch = m.Epoch
	switch c.ID {
	case "":
		c.ID, c.Seq = m.Head, m.Seq
	case "acked":
		c.ID, c.Seq = m.Acked, 0 // its seq is not told: the next event's is taken as it comes
		if c.ID == "" {
			c.ID = "0"
		}
		c.unsure = true
	}
	if m.Recovered {
		c.unsure = c.unsure && c.ID != "0"
		return nil
	}
	c.unsure = true
	return &Gap{Topic: m.Topic, Missed: m.Missed}
}

// Event takes an event and reports whether it is new: false for an ID at
// or below the cursor (sent twice, or out of order), which the
// application must not be handed. A new event moves the cursor; when its
// seq skips numbers after the cursor's, the hole is returned as a Gap.
func (c *Cursor) Event(id string, seq uint64) (fresh bool, gap *Gap) {
	if c.ID != "" && !idLess(c.ID, id) || c.floor != "" && !idLess(c.floor, id) {
		return false, nil
	}
	c.floor = ""
	// The seq is checked when the cursor's is known: a seq of its own, or
	// 0 at "0" (nothing yet, so the next is 1).
	// Seq 1 after others starts a new sequence (an idle topic's history
	// expired under a live subscription): nothing was lost.
	known := !c.unsure && (c.Seq > 0 || c.ID == "0")
	if known && seq > 1 && seq != c.Seq+1 {
		gap = &Gap{After: c.Seq, Seq: seq}
	}
	c.ID, c.Seq, c.unsure = id, seq, false
	return true, gap
}

// MarshalText encodes the cursor for a Store.
func (c Cursor) MarshalText() ([]byte, error) {
	type plain Cursor
	return json.Marshal(plain(c))
}

// UnmarshalText decodes what MarshalText made.
func (c *Cursor) UnmarshalText(b []byte) error {
	type plain Cursor
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*c = Cursor(p)
	return nil
}

// idLess reports whether stream ID a ("<ms>-<seq>", or "0") sorts before
// b. IDs come from Redis without leading zeros, so numbers compare by
// length, then by digits; anything else sorts first.
func idLess(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	if c := cmpNum(am, bm); c != 0 {
		return c < 0
	}
	return cmpNum(as, bs) < 0
}

func splitID(id string) (ms, seq string) {
	ms, seq, _ = strings.Cut(id, "-")
	if seq == "" {
		seq = "0"
	}
	return ms, seq
}

func cmpNum(a, b string) int {
	if _, err := strconv.ParseUint(a, 10, 64); err != nil {
		a = ""
	}
	if _, err := strconv.ParseUint(b, 10, 64); err != nil {
		b = ""
	}
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}
