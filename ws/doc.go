// Package ws is wsbus's WebSocket edge: a raw listener that upgrades
// Config.Path straight off the connection (the handshake parsed and
// answered in a pooled buffer, without allocating) and hands every other
// path to a net/http handler, an epoll loop that owns upgraded
// connections by their fd alone, a bounded worker pool that reads and
// writes them, and bounded write queues of Frames encoded once and shared
// by every connection they go to.
//
// An idle connection has no goroutine, timer or buffer of its own: reads
// take a pooled buffer only while data is there, writes go straight to the
// socket, and a worker only while frames wait for room.
//
//	srv, err := ws.New(ws.Config{Handler: h, HTTP: mux, Path: "/ws"})
//	ln, _ := net.Listen("tcp", "127.0.0.1:8080")
//	go srv.Serve(ln)
//	...
//	conn.Send(ws.TextFrame(payload)) // from the Handler
//
// Send queues frames that must not be lost and closes a connection whose
// queue would pass Config.MaxQueue with 4001. Frames the Handler can
// produce again (live events it can read back from a log) go through
// Offer: with Config.Overflow OverflowDrop an overflow drops them instead
// and hands them back (OverflowHandler, Conn.Recover), so a slow client
// is caught up at its own pace rather than disconnected.
//
// This package knows nothing of topics or Redis, nor of the application's
// path or close codes; the Handler and the Config it is given do.
package ws
