package ws

import "encoding/binary"

// Server frames are unmasked: the header is 2, 4 or 10 bytes.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
	finBit         = 0x80
)

// TextFrame returns a complete unmasked text frame carrying payload: the
// bytes that Conn.Send queues. Encode an event once and send the same frame
// to every connection.
func TextFrame(payload []byte) []byte {
	return AppendFrame(make([]byte, 0, headerSize(len(payload))+len(payload)), opText, payload)
}

// AppendFrame appends one unmasked frame with the FIN bit to dst.
func AppendFrame(dst []byte, op byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, finBit|op, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, finBit|op, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, finBit|op, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, payload...)
}

func headerSize(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xFFFF:
		return 4
	}
	return 10
}

// closeFrame encodes a close frame with code and reason (reason is cut to
// fit the 125-byte control frame limit).
func closeFrame(code uint16, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), code)
	return AppendFrame(nil, opClose, append(p, reason...))
}

// pingFrame is shared by every keepalive ping.
var pingFrame = AppendFrame(nil, opPing, nil)
