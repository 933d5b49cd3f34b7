// Package bus runs wsbus on top of Redis: the Owner leases partitions and
// moves each owned partition's ingress into topic history and live pub/sub,
// and the Gateway serves WebSocket clients (a ws.Handler) from that history
// and pub/sub.
//
//	owner, _ := bus.NewOwner(bus.OwnerConfig{Redis: rdb, Keys: keys, Partitions: n, Node: "gw1"})
//	go owner.Run(ctx)
//	gw, _ := bus.NewGateway(bus.GatewayConfig{Redis: rdb, Keys: keys, Partitions: n})
//	srv, _ := ws.New(ws.Config{Handler: gw})
package bus
