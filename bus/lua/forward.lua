-- forwardScript moves a misrouted entry to the ingress of its partition,
-- fenced by the lease of the partition it was found in. The two keys are
-- in different slots, so it only runs on a single Redis; on Redis Cluster
-- the lease is checked just before a plain XADD instead (see Owner.forward).
-- KEYS: owner, target ingress. ARGV: lease value, topic, data, origin,
-- deadline ("" for none).
-- Returns the forwarded entry's ID.

local owner, target = KEYS[1], KEYS[2]
local lease, topic, data, origin, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
if deadline ~= '' then
  return redis.call('XADD', target, '*', 'topic', topic, 'data', data, 'forwarded_from', origin, 'deadline', deadline)
end
return redis.call('XADD', target, '*', 'topic', topic, 'data', data, 'forwarded_from', origin)
