// Package e2e holds end-to-end tests that drive the built wsbus binary as a
// separate process, with independent clients: Node's ws package (node/),
// plain redis-cli style XADDs, and raw WebSocket connections.
package e2e
