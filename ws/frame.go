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

// Frame is one complete unmasked server frame, header and payload: what
// Conn.Send, Offer and SendWait queue. Only this package encodes one
// (TextFrame, TextFrameString), so a payload cannot reach the wire
// unframed. Encode an event once and send the same Frame to every
// connection: a Frame is a slice header, so passing it copies no bytes,
// and every connection shares its bytes. The zero Frame is empty: sending
// it writes nothing.
type Frame struct{ b []byte }

// TextFrame returns a text frame carrying payload, copied once.
func TextFrame(payload []byte) Frame {
	return Frame{appendFrame(make([]byte, 0, headerSize(len(payload))+len(payload)), opText, payload)}
}

// TextFrameString is TextFrame for a payload held in a string (as pub/sub
// messages are), copied once.
func TextFrameString(payload string) Frame {
	n := len(payload)
	dst := make([]byte, 0, headerSize(n)+n)
	dst = appendHeader(dst, opText, n)
	return Frame{append(dst, payload...)}
}

// Payload returns the frame's payload, such as that of a frame
// Conn.Recover hands back. It shares the frame's bytes: never modify it.
func (f Frame) Payload() []byte {
	if len(f.b) < 2 {
		return nil
	}
	switch f.b[1] & 0x7F {
	case 126:
		return f.b[4:]
	case 127:
		return f.b[10:]
	}
	return f.b[2:]
}

// Bytes returns the frame as it goes on the wire, for a writer that is
// not a Conn (a baseline server writing its own sockets, say). It shares
// the frame's bytes: never modify it.
func (f Frame) Bytes() []byte { return f.b }

// appendFrame appends one unmasked frame with the FIN bit to dst.
func appendFrame(dst []byte, op byte, payload []byte) []byte {
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
	return appendFrame(nil, opClose, append(p, reason...))
}

// pingFrame is shared by every keepalive ping.
var pingFrame = appendFrame(nil, opPing, nil)
