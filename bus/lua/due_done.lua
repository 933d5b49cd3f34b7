-- dueDoneScript is the third step of an escalation on Redis Cluster,
-- fenced: the escalated members leave the deadlines set.
-- KEYS: owner, deadlines. ARGV: lease value, then the members.
-- Returns the next due score, or -1.

local owner, deadlines = KEYS[1], KEYS[2]
local lease = ARGV[1]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
for i = 2, #ARGV do
  redis.call('ZREM', deadlines, ARGV[i])
end
local next = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
return next[2] and tonumber(next[2]) or -1
