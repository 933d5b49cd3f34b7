package bus

import "github.com/redis/go-redis/v9"

// All scripts touch the keys of one partition only, which share the hash
// tag {p}: they run in one Redis Cluster slot.

// acquireScript takes the lease of a partition when it is free (or already
// ours) and returns its fencing token, or nil. A new owner's token is one
// more than any before it.
// KEYS: owner, partition meta. ARGV: node, ttl ms.
var acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local node, token = string.match(cur, '^(.*) (%d+)$')
  if node == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = redis.call('HINCRBY', KEYS[2], 'fence', 1)
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'changed', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token`)

// renewScript extends a lease that is still ours. KEYS: owner.
// ARGV: lease value, ttl ms. Returns 1, or 0 when the lease was lost.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// releaseScript deletes a lease that is still ours. KEYS: owner.
// ARGV: lease value.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// ensureScript makes sure a partition has its ingress stream, consumer
// group and epoch. A group that must be created here means the partition's
// data was lost (migrations create every group), so the epoch is renewed.
// KEYS: owner, ingress, partition meta. ARGV: lease value, group, new epoch.
// Returns 1 when the epoch was renewed.
var ensureScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
if type(created) == 'table' and created.ok or created == 'OK' or not redis.call('HGET', KEYS[3], 'epoch') then
  redis.call('HSET', KEYS[3], 'epoch', ARGV[3])
  return 1
end
return 0`)

// applyScript applies one batch of decoded ingress entries, fenced by the
// lease: each history entry is added to its topic stream with the ingress
// ID (an ID not above the stream's top means it was added before: skipped,
// so a replay adds nothing twice), then published; refused entries go to
// the dead-letter stream; everything is acknowledged.
//
// KEYS: owner, ingress, dead, then a topic stream and live channel per
// history op. ARGV: lease value, group, max history length, history ttl ms,
// op count, then per op: "h" id data event | "d" id reason topic data | "a" id.
// Returns the number of entries added to history.
var applyScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local k, a, added = 4, 6, 0
local acks = {}
for i = 1, tonumber(ARGV[5]) do
  local kind, id = ARGV[a], ARGV[a + 1]
  if kind == 'h' then
    local ok = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', ARGV[3], id, 'data', ARGV[a + 2])
    if type(ok) == 'string' then
      redis.call('PEXPIRE', KEYS[k], ARGV[4])
      redis.call('SPUBLISH', KEYS[k + 1], ARGV[a + 3])
      added = added + 1
    end
    k, a = k + 2, a + 4
  elseif kind == 'd' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*',
      'id', id, 'reason', ARGV[a + 2], 'topic', ARGV[a + 3], 'data', ARGV[a + 4])
    a = a + 5
  else
    a = a + 2
  end
  acks[#acks + 1] = id
end
if #acks > 0 then
  redis.call('XACK', KEYS[2], ARGV[2], unpack(acks))
end
return added`)

// forwardScript moves a misrouted entry to the ingress of its partition,
// fenced by the lease of the partition it was found in. The two keys are in
// different slots, so it only runs on a single Redis; on Redis Cluster the
// lease is checked just before a plain XADD instead (see forward).
// KEYS: owner, target ingress. ARGV: lease value, topic, data, origin.
var forwardScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
return redis.call('XADD', KEYS[2], '*', 'topic', ARGV[2], 'data', ARGV[3], 'forwarded_from', ARGV[4])`)

// trimScript trims the ingress stream to entries newer than ARGV[3], but
// never past the oldest entry still pending (XTRIM would drop it).
// KEYS: owner, ingress. ARGV: lease value, group, min ID ("<ms>-0").
var trimScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local minid = ARGV[3]
local pend = redis.call('XPENDING', KEYS[2], ARGV[2])
if pend[1] > 0 then
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
  end
  local pm, ps = parse(pend[2])
  local mm, ms = parse(minid)
  if pm < mm or (pm == mm and ps < ms) then minid = pend[2] end
end
return redis.call('XTRIM', KEYS[2], 'MINID', '~', minid)`)
