package bus

import (
	_ "embed"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Each script's Lua is a file in lua/ that starts with what its KEYS and
// ARGV are and what it returns, then names them as locals. Functions that
// several scripts share are preludes in lua/lib/; newScript joins the
// preludes a script's var lists in front of its body.
//
// All scripts touch the keys of one partition only, which share the hash
// tag {p}: they run in one Redis Cluster slot (the exceptions,
// forwardScript and escalateOnceScript, say so).

// newScript joins preludes and a body, in that order, into one script. A
// newline between the parts keeps a file without a final one from running
// into the next.
func newScript(parts ...string) *redis.Script {
	return redis.NewScript(strings.Join(parts, "\n"))
}

// luaStreams defines idless and delivered: lua/lib/streams.lua.
//
//go:embed lua/lib/streams.lua
var luaStreams string

// luaSeq defines topseq: lua/lib/seq.lua.
//
//go:embed lua/lib/seq.lua
var luaSeq string

// luaKeep defines keepuntil: lua/lib/keep.lua.
//
//go:embed lua/lib/keep.lua
var luaKeep string

// acquireScript takes a partition's lease: lua/acquire.lua.
var acquireScript = newScript(acquireLua)

//go:embed lua/acquire.lua
var acquireLua string

// renewScript extends a lease still ours: lua/renew.lua.
var renewScript = newScript(renewLua)

//go:embed lua/renew.lua
var renewLua string

// releaseScript deletes a lease still ours: lua/release.lua.
var releaseScript = newScript(releaseLua)

//go:embed lua/release.lua
var releaseLua string

// readScript reads the entries left pending, fenced: lua/read.lua.
var readScript = newScript(luaStreams, readLua)

//go:embed lua/read.lua
var readLua string

// claimScript claims what earlier owners left pending: lua/claim.lua.
var claimScript = newScript(claimLua)

//go:embed lua/claim.lua
var claimLua string

// ensureScript checks a partition's group and epoch: lua/ensure.lua.
var ensureScript = newScript(luaStreams, ensureLua)

//go:embed lua/ensure.lua
var ensureLua string

// applyScript applies a batch of ingress entries, fenced: lua/apply.lua.
var applyScript = newScript(luaStreams, luaSeq, luaKeep, applyLua)

//go:embed lua/apply.lua
var applyLua string

// forwardScript moves a misrouted entry, fenced: lua/forward.lua.
var forwardScript = newScript(forwardLua)

//go:embed lua/forward.lua
var forwardLua string

// trimScript trims the ingress stream, fenced: lua/trim.lua.
var trimScript = newScript(luaStreams, trimLua)

//go:embed lua/trim.lua
var trimLua string

// renewEpochScript is a gateway's renewal of an epoch it found lost data
// under: lua/renew_epoch.lua.
var renewEpochScript = newScript(renewEpochLua)

//go:embed lua/renew_epoch.lua
var renewEpochLua string
