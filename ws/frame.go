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

// TextFrameString is TextFrame for a payload held in a string (as pub/sub
// messages are), copied once.
func TextFrameString(payload string) []byte {
	n := len(payload)
	dst := make([]byte, 0, headerSize(n)+n)
	dst = appendHeader(dst, opText, n)
	return append(dst, payload...)
}

// AppendFrame appends one unmasked frame with the FIN bit to dst.
func AppendFrame(dst []byte, op byte, payload []byte) []byte {
	return append(appendHeader(dst, op, len(payload)), payload...)
}

// appendHeader appends the header of an unmasked final frame of n bytes.
func appendHeader(dst []byte, op byte, n int) []byte {
	switch {
	case n < 126:
		return append(dst, finBit|op, byte(n))
	case n <= 0xFFFF:
		return binary.BigEndian.AppendUint16(append(dst, finBit|op, 126), uint16(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, finBit|op, 127), uint64(n))
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

// FramePayload returns the payload of a complete unmasked frame built by
// TextFrame or AppendFrame, such as one Conn.Recover hands back.
func FramePayload(frame []byte) []byte {
	if len(frame) < 2 {
		return nil
	}
	switch frame[1] & 0x7F {
	case 126:
		return frame[min(4, len(frame)):]
	case 127:
		return frame[min(10, len(frame)):]
	}
	return frame[2:]
}
