-- escalateOnceScript is the second step of an escalation on Redis Cluster,
-- in the slot of the escalations stream: it appends each event unless it
-- was escalated before (by an owner that stopped before the third step),
-- remembering it for a day.
-- KEYS: escalations, sent. ARGV: escalations max length, now ms, then per
-- event: partition/id, topic, id, seq, data, deadline.
-- Returns how many were appended.

local escalations, sent = KEYS[1], KEYS[2]
local maxlen, now = ARGV[1], ARGV[2]

local n = 0
for i = 3, #ARGV, 6 do
  local member = ARGV[i] -- "<partition>/<id>": the event in the sent set
  local topic, id, seq, data, deadline = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if not redis.call('ZSCORE', sent, member) then
    redis.call('XADD', escalations, 'MAXLEN', '~', maxlen, '*',
      'topic', topic, 'id', id, 'seq', seq, 'data', data, 'deadline', deadline)
    redis.call('ZADD', sent, now, member)
    n = n + 1
  end
end
redis.call('ZREMRANGEBYSCORE', sent, '-inf', tonumber(now) - 86400000)
return n
