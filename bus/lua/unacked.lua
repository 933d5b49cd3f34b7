-- unackedScript is the first step of an escalation on Redis Cluster, in
-- the partition's slot and fenced: of the given due members, it drops
-- those some subject acknowledged and returns the others, still in the
-- set.
-- KEYS: owner, deadlines, then the acked hash of each member's topic.
-- ARGV: lease value, then the members.
-- Returns the unacknowledged members.

local owner, deadlines = KEYS[1], KEYS[2]
local lease = ARGV[1]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local out = {}
for i = 2, #ARGV do
  local m, acked = ARGV[i], KEYS[i + 1]
  if redis.call('ZSCORE', deadlines, m) then
    local id = due(m)
    local max = id and redis.call('HGET', acked, 'max')
    if id and (not max or idless(max, id)) then
      out[#out + 1] = m
    else
      redis.call('ZREM', deadlines, m)
    end
  end
end
return out
