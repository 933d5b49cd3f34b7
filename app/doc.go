// Package app is wsbus's composition root: configuration from flags,
// environment and file, the wiring of Redis, bus and ws, the HTTP
// endpoints, metrics and the shutdown order.
//
//	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
package app
