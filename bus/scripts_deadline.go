package bus

import "github.com/redis/go-redis/v9"

// luaDue defines due(member): the fields of a member of Keys.Deadlines,
// "<id> <seq> <deadline> <topic> <data>" (a topic has no spaces; data is
// the rest, possibly empty): id, seq, deadline, topic, data.
const luaDue = `
local function due(m)
  return string.match(m, '^(%S+) (%d+) (%d+) (%S+) (.*)$')
end
`

// escalateScript escalates, atomically and fenced by the lease, the due
// events of a partition on a single Redis: each that is still in the
// deadlines set and that no subject acknowledged (the topic's highest
// acked ID is below it) is appended to the escalations stream; every one
// leaves the set. A new owner finds only the events not handled yet, so
// each is escalated once.
// KEYS: owner, deadlines, escalations, then the acked hash of each
// member's topic. ARGV: lease value, escalations max length, then the
// members. Returns {escalated, next due score or -1}.
var escalateScript = redis.NewScript(luaStreams + luaDue + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local n = 0
for i = 3, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', KEYS[2], m) then
    local id, seq, dl, topic, data = due(m)
    -- A member that does not parse has the owner key for its hash: no HGET.
    local max = id and redis.call('HGET', KEYS[i + 1], 'max')
    if id and (not max or idless(max, id)) then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
        'topic', topic, 'id', id, 'seq', seq, 'data', data, 'deadline', dl)
      n = n + 1
    end
    redis.call('ZREM', KEYS[2], m)
  end
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {n, next[2] and tonumber(next[2]) or -1}`)

// unackedScript is the first step of an escalation on Redis Cluster, in
// the partition's slot and fenced: of the given due members, it drops
// those some subject acknowledged and returns the others, still in the
// set. KEYS: owner, deadlines, then the acked hash of each member's topic.
// ARGV: lease value, then the members. Returns the unacknowledged members.
var unackedScript = redis.NewScript(luaStreams + luaDue + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local out = {}
for i = 2, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', KEYS[2], m) then
    local id = due(m)
    local max = id and redis.call('HGET', KEYS[i + 1], 'max')
    if id and (not max or idless(max, id)) then
      out[#out + 1] = m
    else
      redis.call('ZREM', KEYS[2], m)
    end
  end
end
return out`)

// escalateOnceScript is the second step on Redis Cluster, in the slot of
// the escalations stream: it appends each event unless it was escalated
// before (by an owner that stopped before the third step), remembering
// it for a day. KEYS: escalations, sent. ARGV: escalations max length,
// now ms, then per event: partition/id, topic, id, seq, data, deadline.
// Returns how many were appended.
var escalateOnceScript = redis.NewScript(`
local n = 0
for i = 3, #ARGV, 6 do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'topic', ARGV[i + 1], 'id', ARGV[i + 2], 'seq', ARGV[i + 3], 'data', ARGV[i + 4], 'deadline', ARGV[i + 5])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
    n = n + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - 86400000)
return n`)

// dueDoneScript is the third step on Redis Cluster, fenced: the escalated
// members leave the deadlines set. KEYS: owner, deadlines. ARGV: lease
// value, then the members. Returns the next due score, or -1.
var dueDoneScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return next[2] and tonumber(next[2]) or -1`)
