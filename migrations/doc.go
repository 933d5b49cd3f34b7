// Package migrations holds the versioned Redis setup steps of a bus,
// compiled into the binary and applied in order. Every step is idempotent,
// so two processes migrating the same bus at once do no harm; the schema
// version in <prefix>:meta only moves forward.
//
//	applied, err := migrations.Run(ctx, rdb, streams.Keys{Prefix: "wsbus"}, 64)
package migrations
