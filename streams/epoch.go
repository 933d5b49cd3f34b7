package streams

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

// NewEpoch returns a random partition epoch: 8 lower-case base32 characters.
func NewEpoch() string {
	var b [5]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}
