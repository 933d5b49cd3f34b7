package ws

import "errors"

var (
	// ErrClosed is returned by Send on a connection that is closing or closed.
	ErrClosed = errors.New("ws: connection closed")
	// ErrSlowConsumer is returned by Send when the connection's queue is
	// full; the connection is then closed with CloseSlowConsumer.
	ErrSlowConsumer = errors.New("ws: slow consumer")
	// ErrOverflow is returned by Offer under OverflowDrop when the frame
	// was refused: the queue overflowed and the Handler has not yet taken
	// the dropped frames (Conn.Recover).
	ErrOverflow = errors.New("ws: queue overflowed")
	// ErrServerClosed is returned by Serve after Shutdown.
	ErrServerClosed = errors.New("ws: server closed")
	// ErrUnsupported is returned by New where there is no epoll.
	ErrUnsupported = errors.New("ws: epoll is only available on Linux")
)

// errHandshakeTooLarge ends a handshake past Config.MaxHandshakeBytes.
var errHandshakeTooLarge = errors.New("ws: handshake too large")

// errWouldBlock means a socket's send buffer is full: queue the rest.
var errWouldBlock = errors.New("ws: write would block")

// errStopReading ends a read without closing: the close handshake is under way.
var errStopReading = errors.New("ws: stop reading")

// errProtocol and friends carry the close code a bad frame is answered with.
type closeError struct {
	code   uint16
	reason string
}

func (e *closeError) Error() string { return "ws: " + e.reason }

var (
	errNotMasked     = &closeError{CloseProtocolError, "client frame not masked"}
	errReservedBits  = &closeError{CloseProtocolError, "reserved bits set"}
	errReservedOp    = &closeError{CloseProtocolError, "reserved opcode"}
	errControlFrame  = &closeError{CloseProtocolError, "fragmented or oversized control frame"}
	errContinuation  = &closeError{CloseProtocolError, "unexpected continuation frame"}
	errFragmented    = &closeError{CloseProtocolError, "new message inside a fragmented one"}
	errBadClose      = &closeError{CloseProtocolError, "invalid close frame"}
	errTooBig        = &closeError{CloseMessageTooBig, "message too big"}
	errInvalidUTF8   = &closeError{CloseInvalidPayload, "invalid UTF-8 in text message"}
	errServerClosing = &closeError{CloseGoingAway, "server shutting down"}
)
