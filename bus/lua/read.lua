-- readScript reads, for the partition's owner and fenced by its lease, a
-- batch of the entries pending under this consumer: claimed from earlier
-- owners (a version of wsbus that read with XREADGROUP, or anything else
-- that did; this one never leaves an entry pending). When none are pending
-- it returns the group's last delivered ID instead: new entries come after
-- it.
-- KEYS: owner, ingress. ARGV: lease value, group, consumer, count.
-- Returns the entries, each {id, {field, value, ...}} ({id, nil} for one
-- deleted while pending), or that ID.

local owner, ingress = KEYS[1], KEYS[2]
local lease, group, consumer, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', ingress, '0')
if type(r) == 'table' and r.err then
  return r
end
if #r[1][2] > 0 then
  return r[1][2]
end
local last = delivered(ingress, group)
if last then
  return last
end
return redis.error_reply('NOGROUP no consumer group ' .. group)
