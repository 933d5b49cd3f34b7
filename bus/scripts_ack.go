package bus

import _ "embed"

// ackScript moves subjects' cursors on a topic forward: lua/ack.lua.
var ackScript = newScript(luaStreams, luaKeep, ackLua)

//go:embed lua/ack.lua
var ackLua string
