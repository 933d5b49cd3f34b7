// Package streams is wsbus's view of Redis Streams: the key layout, the
// partition hash, publishing, ingress entry decoding, event encoding and the
// history reads that resume a client.
//
// A service publishes without this package by hashing the topic itself:
//
//	p := streams.Partition(topic, n)             // crc32(topic) % n
//	XADD wsbus:{p}:in * topic <topic> data <payload>
//
// In Go (the package Example runs it):
//
//	pub := streams.NewPublisher(rdb, streams.Keys{Prefix: "wsbus"}, 0)
//	id, err := pub.Publish(ctx, "user:42", []byte(`{"text":"hi"}`))
package streams
