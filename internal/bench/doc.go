// Package bench is wsbus's load tool (wsbus bench): it opens many WebSocket
// connections to a gateway from worker processes on many 127.x source
// addresses, measures the gateway from outside (its /metrics: RSS, heap,
// goroutines, open fds), and times events from XADD to every receipt.
//
// A worker is the same binary run as `wsbus bench --worker`: it reads a Job
// as one JSON line on stdin, opens its connections, and answers the
// commands "report" and "quit" with one JSON line each on stdout.
//
// `wsbus bench --soak` (soak.go, driven by soak.sh) holds the connections
// for a long time instead, with steady publishing, topic switches and
// gateway restarts, and checks every event at every client
// (soak_check.go).
//
// `wsbus bench --report DIR` writes a run as a page of plots that needs no
// other file (report.go, report.html; the SVG in report_plots.go) and as
// result.json.
package bench
