-- ensureScript makes sure a partition has its ingress stream, consumer
-- group and epoch, and that its data has not gone back in time. A group
-- that must be created here means the partition's data was lost
-- (migrations create every group). A group that has delivered less than
-- this node applied under the same epoch went back: a failover before
-- replication, a restart from an older snapshot. Entries clients may have
-- seen can be gone, or replaced by new ones under the same IDs (a clock
-- behind the old one's). Either way the epoch is renewed.
-- KEYS: owner, ingress, partition meta. ARGV: lease value, group, new
-- epoch, the epoch and the last ID this node applied under it ("" if none).
-- Returns {status, epoch}: status 0 as expected, 1 data missing, 2 the
-- group went back; the epoch is renewed for 1 and 2.

local owner, ingress, meta = KEYS[1], KEYS[2], KEYS[3]
local lease, group, newepoch, appliedepoch, appliedlast =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local created = redis.pcall('XGROUP', 'CREATE', ingress, group, '0', 'MKSTREAM')
local epoch = redis.call('HGET', meta, 'epoch')
if type(created) == 'table' and created.ok or created == 'OK' or not epoch then
  redis.call('HSET', meta, 'epoch', newepoch)
  return {1, newepoch}
end
if appliedlast ~= '' and epoch == appliedepoch then
  local last = delivered(ingress, group)
  if last and idless(last, appliedlast) then
    redis.call('HSET', meta, 'epoch', newepoch)
    return {2, newepoch}
  end
end
return {0, epoch}
