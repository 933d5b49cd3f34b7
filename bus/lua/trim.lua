-- trimScript trims the ingress stream to entries newer than the min ID,
-- but never past the oldest entry still pending, nor past the last one the
-- group delivered: XTRIM would drop them unprocessed (a backlog older than
-- the retention, say, from while no owner ran).
-- KEYS: owner, ingress. ARGV: lease value, group, min ID ("<ms>-0").
-- Returns the number of entries trimmed.

local owner, ingress = KEYS[1], KEYS[2]
local lease, group, minid = ARGV[1], ARGV[2], ARGV[3]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local pend = redis.call('XPENDING', ingress, group)
if pend[1] > 0 and idless(pend[2], minid) then
  minid = pend[2]
end
local last = delivered(ingress, group)
if last and idless(last, minid) then
  minid = last
end
return redis.call('XTRIM', ingress, 'MINID', '~', minid)
