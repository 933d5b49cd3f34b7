package bus

import _ "embed"

// luaDue defines due: lua/lib/due.lua.
//
//go:embed lua/lib/due.lua
var luaDue string

// escalateScript escalates due events on a single Redis: lua/escalate.lua.
var escalateScript = newScript(luaStreams, luaDue, escalateLua)

//go:embed lua/escalate.lua
var escalateLua string

// unackedScript is escalation step 1 on Redis Cluster: lua/unacked.lua.
var unackedScript = newScript(luaStreams, luaDue, unackedLua)

//go:embed lua/unacked.lua
var unackedLua string

// escalateOnceScript is step 2 on Redis Cluster: lua/escalate_once.lua.
var escalateOnceScript = newScript(escalateOnceLua)

//go:embed lua/escalate_once.lua
var escalateOnceLua string

// dueDoneScript is step 3 on Redis Cluster: lua/due_done.lua.
var dueDoneScript = newScript(dueDoneLua)

//go:embed lua/due_done.lua
var dueDoneLua string
