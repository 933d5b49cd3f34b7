-- raiseVersion sets the schema field only upward, so a slower concurrent
-- migrator cannot move it back.
-- KEYS: bus meta. ARGV: version.
-- Returns the version.

local meta = KEYS[1]
local version = tonumber(ARGV[1])

local cur = tonumber(redis.call('HGET', meta, 'schema') or '0')
if version > cur then redis.call('HSET', meta, 'schema', version) end
return version
