// Package bus runs wsbus on top of Redis: the Owner leases partitions and
// moves each owned partition's ingress into topic history and live pub/sub,
// and the Gateway serves WebSocket clients (a ws.Handler) from that history
// and pub/sub.
//
// The Gateway's files: gateway.go (the ws.Handler), gateway_subscribe.go
// (a subscription: history, then live), gateway_topic.go (topics and
// fan-out), gateway_shards.go (fan-out over the cores),
// gateway_pubsub.go (the pub/sub connections), resume.go (why
// history + live has no gap and no duplicate, and the catch-up that keeps
// it after a lost connection), gateway_lag.go (lagging clients), and
// protocol.go (the messages and their frames).
//
// leases is a second client of the same Redis, for the lease traffic
// (OwnerConfig.LeaseRedis):
//
//	owner, _ := bus.NewOwner(bus.OwnerConfig{Redis: rdb, LeaseRedis: leases, Keys: keys, Partitions: n, Node: "gw1"})
//	go owner.Run(ctx)
//	gw, _ := bus.NewGateway(bus.GatewayConfig{Redis: rdb, Keys: keys, Partitions: n})
//	srv, _ := ws.New(ws.Config{Handler: gw, Path: "/v1/ws"})
//
// # Locks
//
// The order, across bus and ws; a lock is only ever taken while holding
// those above it, never below:
//
//  1. topic.mu (a topic's subscribers, seen, backlog): fan-out and
//     catch-ups queue frames under it;
//  2. ws.Conn.mu (a connection's queue), taken by Send, Offer and Close;
//  3. ws.Server.mu, then the epoll's own lock (ws/server.go).
//
// Leaves, held alone and never across a call into another component:
// Gateway.mu (the topic map and what each pub/sub connection was asked
// for a topic's channel: read-locked per live event), client.mu,
// liveConn.mu, expiries.mu, acker.mu, coalescer.mu, Owner.mu. No lock is
// held while waiting on Redis: each pub/sub connection is owned by one
// goroutine (gateway_pubsub.go) that others only poke; a history read,
// an ack flush and a lease script run with nothing held. Nor across a
// hand-over to a fan-out shard: its reader queues a message holding
// nothing, and a shard takes topic.mu as fanOut did on the reader.
//
// # Goroutines
//
// Everything a Gateway starts (the acker, the topic sweep, the token
// expiry heap, the epochs' reader, one fan-out shard per core, each
// pub/sub connection's owner, reader and catch-up worker, a lagging
// client's catch-up) is waited for by Close: NewGateway starts the first
// five, the rest start
// under Gateway.mu while it is open. A pub/sub reader hands each message
// to the shard of its channel (gateway_shards.go), which fans it out; a
// topic's events are fanned out by one shard, in order. Owner.Run waits for every
// partition pipeline it started before it returns.
package bus
