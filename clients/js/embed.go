// Package wsbusclient hands the gateway the browser build of the npm
// package wsbus-client: index.js, which has no imports and runs in a
// browser as is. The demo page loads it from GET /wsbus-client.js, so the
// page and the package cannot drift apart and need no CDN or build step.
//
//	http.HandleFunc("GET /wsbus-client.js", func(w http.ResponseWriter, _ *http.Request) {
//		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
//		w.Write(wsbusclient.Source)
//	})
//
// This file is not part of the npm package (package.json "files").
package wsbusclient

import _ "embed"

// Source is index.js, the whole client as one ES module.
//
//go:embed index.js
var Source []byte
