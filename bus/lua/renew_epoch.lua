-- renewEpochScript renews a partition's epoch that is still the one a
-- gateway served its subscribers under, once the gateway has seen that
-- partition's history go back (a topic's seq lower than one it delivered,
-- under the same epoch): Redis lost data that no owner's check saw.
-- KEYS: the partition's meta. ARGV: the old epoch, a new one.
-- Returns 1 when renewed, 0 when the epoch had changed already.

local meta = KEYS[1]
local old, new = ARGV[1], ARGV[2]

if redis.call('HGET', meta, 'epoch') == old then
  redis.call('HSET', meta, 'epoch', new)
  return 1
end
return 0
