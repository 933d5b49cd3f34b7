package app

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"net/http"
	"time"

	"github.com/wsbus/wsbus/bus"
	"github.com/wsbus/wsbus/streams"
)

//go:embed status.html
var statusPage []byte

// fleetStatus is the JSON of GET /status.json: what `wsbus status` reads
// from Redis, with what only the answering node knows (its connections
// and subscriptions; the canary) added to it.
type fleetStatus struct {
	Prefix     string          `json:"prefix"`
	Partitions int             `json:"partitions"`
	Schema     int             `json:"schema"`
	Node       string          `json:"node"` // the node that answered
	Time       time.Time       `json:"time"`
	Nodes      []nodeStatus    `json:"nodes"`
	Partition  []partitionView `json:"partition"`
	// CountsNote says whose connections and subscriptions are known.
	CountsNote string `json:"counts_note"`
}

// countsNote is fleetStatus.CountsNote: the membership (<prefix>:nodes)
// holds node IDs and heartbeats only, so a node knows its own counts and
// no other's.
const countsNote = "connections and subscriptions are this node's only: the membership in Redis records no counts; open /status on another node for its own"

// nodeStatus is a live node; Connections and Subscriptions are null for
// every node but the one that answered (see countsNote).
type nodeStatus struct {
	NodeStatus
	Connections   *int64 `json:"connections"`
	Subscriptions *int64 `json:"subscriptions"`
}

// partitionView is a partition with its canary as the answering node sees
// it.
type partitionView struct {
	PartitionStatus
	Canary canaryStatus `json:"canary"`
}

// canaryStatus is the continuity canary's view of a partition (canary.go):
// events lost (wsbus_canary_lost_total), the latency of the last canary
// event and when it arrived. Every field is zero while the canary is off
// or has seen nothing of the partition, and the page shows "-".
type canaryStatus struct {
	Lost      uint64    `json:"lost"`
	LatencyMS float64   `json:"latency_ms"`
	Last      time.Time `json:"last"`
}

// statusPage is GET /status: a page that draws GET /status.json every 2 s.
func (h *httpAPI) statusPage(w http.ResponseWriter, r *http.Request) {
	if !h.operatorKeyOK(w, r) {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(statusPage)
}

// statusJSON is GET /status.json.
func (h *httpAPI) statusJSON(w http.ResponseWriter, r *http.Request) {
	if !h.operatorKeyOK(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusReadTimeout)
	defer cancel()
	st, err := ReadStatus(ctx, h.rdb, streams.Keys{Prefix: h.cfg.prefix})
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "reading the status: "+err.Error())
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, h.fleetStatus(st))
}

// fleetStatus adds to st what this node knows of itself.
func (h *httpAPI) fleetStatus(st Status) fleetStatus {
	f := fleetStatus{Prefix: st.Prefix, Partitions: st.Partitions, Schema: st.Schema, Node: h.cfg.NodeID,
		Time: time.Now().UTC(), Nodes: make([]nodeStatus, len(st.Nodes)),
		Partition: make([]partitionView, len(st.Partition)), CountsNote: countsNote}
	for i, n := range st.Nodes {
		f.Nodes[i].NodeStatus = n
		if n.ID == h.cfg.NodeID {
			conns, subs := max(h.ws.Stats().Connections-int64(h.canary.connections()), 0), h.gw.Stats().Subscriptions
			f.Nodes[i].Connections, f.Nodes[i].Subscriptions = &conns, &subs
		}
	}
	for i, p := range st.Partition {
		f.Partition[i].PartitionStatus = p
		f.Partition[i].Canary = h.canary.view(p.P)
	}
	return f
}

// operatorKeyOK lets a request see the fleet's status: one with the
// operator key, the --publish-key value, as Authorization: Bearer KEY or
// ?key=KEY (the page passes its own ?key= on to its fetches), or, on an
// --insecure gateway without a --publish-key, any request, as publishing.
// It answers 403 or 401 when not.
func (h *httpAPI) operatorKeyOK(w http.ResponseWriter, r *http.Request) bool {
	if h.cfg.Insecure && h.cfg.PublishKey == "" {
		return true
	}
	if h.cfg.PublishKey == "" {
		writeError(w, http.StatusForbidden, "the status page is off: start the gateway with --publish-key (the operator key), or --insecure")
		return false
	}
	key := bus.BearerToken(r.Header.Get("Authorization"))
	if key == "" {
		key = r.URL.Query().Get("key")
	}
	if subtle.ConstantTimeCompare([]byte(key), []byte(h.cfg.PublishKey)) != 1 {
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeError(w, http.StatusUnauthorized, "the operator key is required: the --publish-key value as Authorization: Bearer KEY, or /status?key=KEY")
		return false
	}
	return true
}
