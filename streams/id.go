package streams

import (
	"strconv"
	"strings"
)

// ID is a parsed stream entry ID. The zero ID sorts before every entry.
type ID struct {
	Ms, Seq uint64
}

// ParseID parses "<ms>-<seq>", "<ms>" (sequence 0) or "0".
func ParseID(s string) (ID, error) {
	ms, seq, found := strings.Cut(s, "-")
	var id ID
	var err error
	if id.Ms, err = strconv.ParseUint(ms, 10, 64); err != nil {
		return ID{}, ErrBadID
	}
	if found {
		if id.Seq, err = strconv.ParseUint(seq, 10, 64); err != nil {
			return ID{}, ErrBadID
		}
	}
	return id, nil
}

// MustParseID is ParseID for IDs that Redis produced; a bad one is a bug.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic("streams: bad ID from Redis: " + s)
	}
	return id
}

// String formats id as Redis does.
func (id ID) String() string {
	return strconv.FormatUint(id.Ms, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}

// Less reports whether id sorts before o.
func (id ID) Less(o ID) bool {
	return id.Ms < o.Ms || id.Ms == o.Ms && id.Seq < o.Seq
}

// IsZero reports whether id is 0-0.
func (id ID) IsZero() bool { return id == ID{} }

// ParseSeq parses an event's seq as clients send it: decimal digits
// without sign or leading zero ("0" alone is 0).
func ParseSeq(s string) (uint64, error) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, ErrBadSeq
	}
	seq, err := strconv.ParseUint(s, 10, 64) // refuses a sign
	if err != nil {
		return 0, ErrBadSeq
	}
	return seq, nil
}
