package app

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
)

// servePprof serves Go's profiles on their own listener, so they are never
// reachable on the public port.
func servePprof(addr string, logger *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	logger.Info("pprof serving", "addr", "http://"+addr+"/debug/pprof/")
	if err := http.ListenAndServe(addr, mux); err != nil {
		logger.Error("pprof listener", "err", err)
	}
}
