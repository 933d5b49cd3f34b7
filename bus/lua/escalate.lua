-- escalateScript escalates, atomically and fenced by the lease, the due
-- events of a partition on a single Redis: each that is still in the
-- deadlines set and that no subject acknowledged (the topic's highest
-- acked ID is below it) is appended to the escalations stream; every one
-- leaves the set. A new owner finds only the events not handled yet, so
-- each is escalated once.
-- KEYS: owner, deadlines, escalations, then the acked hash of each
-- member's topic. ARGV: lease value, escalations max length, then the
-- members.
-- Returns {escalated, next due score or -1}.

local owner, deadlines, escalations = KEYS[1], KEYS[2], KEYS[3]
local lease, maxlen = ARGV[1], ARGV[2]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local n = 0
for i = 3, #ARGV do
  local m, acked = ARGV[i], KEYS[i + 1]
  if redis.call('ZSCORE', deadlines, m) then
    local id, seq, dl, topic, data = due(m)
    -- A member that does not parse has the owner key for its hash: no HGET.
    local max = id and redis.call('HGET', acked, 'max')
    if id and (not max or idless(max, id)) then
      redis.call('XADD', escalations, 'MAXLEN', '~', maxlen, '*',
        'topic', topic, 'id', id, 'seq', seq, 'data', data, 'deadline', dl)
      n = n + 1
    end
    redis.call('ZREM', deadlines, m)
  end
end
local next = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
return {n, next[2] and tonumber(next[2]) or -1}
