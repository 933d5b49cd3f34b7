// Package wsbus is the Go client of a wsbus gateway: it subscribes to
// topics over one WebSocket, hands each event to the application once and
// in order, and reconnects by itself, resuming every topic from the last
// event it handed over, so that nothing is lost across drops, gateway
// restarts and drains.
//
//	c := wsbus.New("ws://127.0.0.1:8080/v1/ws", wsbus.Options{})
//	c.Subscribe("user:42", wsbus.SubscribeOptions{
//		OnEvent: func(e wsbus.Event) { fmt.Println(e.ID, e.Seq, string(e.Data)) },
//		OnGap:   func(g wsbus.Gap) { log.Printf("lost events of %s: refetch", g.Topic) },
//	})
//	err := c.Run(ctx) // until ctx ends or Close
//
// What it does for the application, per topic: keeps a Cursor (the last
// event ID handed over, its seq and the partition epoch, or the head the
// server gave before the first event), resends it on every reconnect,
// drops an event it already handed over, and reports a Gap when the
// server answers recovered:false or a seq skips a number, rather than
// hide it. Cursors can outlive the process through a Store, which is
// written once the application is done with an event: when OnEvent
// returns, or, with Events(), once the next event was taken (seen when
// another arrives, at the next pong on a quiet connection, and when a
// connection ends); so one
// that dies while handling an event is handed it again after a restart,
// with Events() perhaps a few more it had taken since.
//
// The import path is github.com/wsbus/wsbus/clients/go; the package is
// named wsbus. It depends on github.com/gobwas/ws only.
package wsbus
