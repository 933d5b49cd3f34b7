-- claimScript takes over, for the partition's owner, up to a count of the
-- entries other consumers (earlier owners) left pending, fenced by the
-- lease.
-- KEYS: owner, ingress. ARGV: lease value, group, consumer, start, count.
-- Returns the cursor to go on from, "0-0" when done.

local owner, ingress = KEYS[1], KEYS[2]
local lease, group, consumer, start, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
return redis.call('XAUTOCLAIM', ingress, group, consumer, 0, start, 'COUNT', count, 'JUSTID')[1]
