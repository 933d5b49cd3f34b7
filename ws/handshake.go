package ws

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
)

// The server side of RFC 6455's opening handshake, parsed in place in the
// pooled upgradeState's buffer: the Request's fields point into it, and the
// 101 answer is built in it, so an upgrade allocates nothing. (gobwas/ws's
// Upgrader allocates the accept key on every upgrade.)

// handshakeError is a refused handshake and the answer it gets.
type handshakeError struct {
	status int
	reason string
	header string // extra response header lines, each ending in \r\n
}

func (e *handshakeError) Error() string { return "ws: handshake refused: " + e.reason }

// StatusCode returns the HTTP status the handshake is answered with.
func (e *handshakeError) StatusCode() int { return e.status }

var (
	errBadRequestLine = &handshakeError{status: http.StatusBadRequest, reason: "malformed request line"}
	errBadVersion     = &handshakeError{status: http.StatusHTTPVersionNotSupported, reason: "HTTP/1.1 or later required"}
	errBadHeader      = &handshakeError{status: http.StatusBadRequest, reason: "malformed header line"}
	errBadHost        = &handshakeError{status: http.StatusBadRequest, reason: "missing Host header"}
	errBadUpgrade     = &handshakeError{status: http.StatusBadRequest, reason: `missing "Upgrade: websocket" header`}
	errBadConnection  = &handshakeError{status: http.StatusBadRequest, reason: `missing "Connection: Upgrade" header`}
	errBadKey         = &handshakeError{status: http.StatusBadRequest, reason: "missing or malformed Sec-WebSocket-Key header"}
	errNoWSVersion    = &handshakeError{status: http.StatusBadRequest, reason: "missing Sec-WebSocket-Version header"}
	errWSVersion      = &handshakeError{status: http.StatusUpgradeRequired, reason: "unsupported WebSocket version", header: "Sec-WebSocket-Version: 13\r\n"}
	rejectFull        = &handshakeError{status: http.StatusServiceUnavailable, reason: "connection limit reached; retry another node", header: "Retry-After: 1\r\n"}
	rejectClosing     = &handshakeError{status: http.StatusServiceUnavailable, reason: "server shutting down; retry another node", header: "Retry-After: 1\r\n"}
)

// Reject returns an error for Handler.Accept that refuses the handshake
// with an HTTP status and a plain-text reason.
func Reject(status int, reason string) error {
	return &handshakeError{status: status, reason: reason}
}

// refusal is the HTTP answer to a refused handshake. Handler.Accept may
// return Reject's errors, or any error with a StatusCode method (gobwas/ws's
// RejectConnectionError); other errors are a 500.
func refusal(err error) []byte {
	he := &handshakeError{status: http.StatusInternalServerError, reason: "internal error"}
	var coded interface{ StatusCode() int }
	switch {
	case errors.As(err, &he):
	case errors.As(err, &coded):
		he = &handshakeError{status: coded.StatusCode(), reason: err.Error()}
	}
	return httpResponse(strconv.Itoa(he.status)+" "+http.StatusText(he.status), he.header, he.reason+"\n")
}

// headerEnd returns the length of the request head in b (through its
// blank line), or -1 when b does not hold all of it yet.
func headerEnd(b []byte) int {
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		return i + 4
	}
	if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
		return i + 2
	}
	return -1
}

// Header flags: which of the required headers a request had.
const (
	seenHost = 1 << iota
	seenUpgrade
	seenConnection
	seenVersion
	seenKey
)

// parseHandshake checks a complete request head (GET already known) and
// fills req with views into head. It returns the Sec-WebSocket-Key.
func parseHandshake(head []byte, req *Request) (key []byte, err error) {
	line, rest := nextLine(head)
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	uri, version, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 || len(uri) == 0 || !bytes.Equal(method, []byte("GET")) {
		return nil, errBadRequestLine
	}
	minor, ok := bytes.CutPrefix(version, []byte("HTTP/1."))
	if !ok || len(minor) == 0 || minor[0] < '1' || minor[0] > '9' {
		return nil, errBadVersion
	}
	req.URI = uri
	seen := 0
	for len(rest) > 0 {
		line, rest = nextLine(rest)
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return nil, errBadHeader // includes obsolete line folding
		}
		value = bytes.Trim(value, " \t")
		switch {
		case bytes.EqualFold(name, []byte("Host")):
			seen |= seenHost
			req.Host = value
		case bytes.EqualFold(name, []byte("Upgrade")):
			if hasToken(value, "websocket") {
				seen |= seenUpgrade
			}
		case bytes.EqualFold(name, []byte("Connection")):
			if hasToken(value, "upgrade") {
				seen |= seenConnection
			}
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Version")):
			if !bytes.Equal(value, []byte("13")) {
				return nil, errWSVersion
			}
			seen |= seenVersion
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Key")):
			if len(value) != 24 { // base64 of 16 bytes; Decode needs the bound first
				return nil, errBadKey
			}
			var nonce [18]byte
			if n, err := base64.StdEncoding.Decode(nonce[:], value); err != nil || n != 16 {
				return nil, errBadKey
			}
			seen |= seenKey
			key = value
		case bytes.EqualFold(name, []byte("Origin")):
			req.Origin = value
		case bytes.EqualFold(name, []byte("Authorization")):
			req.Authorization = value
		}
		// Sec-WebSocket-Protocol and -Extensions go unanswered: no
		// subprotocol and no extension (permessage-deflate) is agreed.
	}
	switch {
	case seen&seenHost == 0:
		return nil, errBadHost
	case seen&seenUpgrade == 0:
		return nil, errBadUpgrade
	case seen&seenConnection == 0:
		return nil, errBadConnection
	case seen&seenVersion == 0:
		return nil, errNoWSVersion
	case seen&seenKey == 0:
		return nil, errBadKey
	}
	return key, nil
}

// nextLine splits off the first line of b, without its CRLF (or LF).
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// hasToken reports whether the comma-separated list v holds token, in any
// case.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if bytes.EqualFold(bytes.Trim(t, " \t"), []byte(token)) {
			return true
		}
	}
	return false
}

// acceptMagic is the GUID RFC 6455 appends to the client's key.
const acceptMagic = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// appendAccept appends the 101 answer to a handshake with key.
func appendAccept(dst, key []byte) []byte {
	var p [24 + len(acceptMagic)]byte
	copy(p[copy(p[:], key):], acceptMagic)
	sum := sha1.Sum(p[:])
	var accept [28]byte
	base64.StdEncoding.Encode(accept[:], sum[:])
	dst = append(dst, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	dst = append(dst, accept[:]...)
	return append(dst, "\r\n\r\n"...)
}
