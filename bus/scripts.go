package bus

import "github.com/redis/go-redis/v9"

// All scripts touch the keys of one partition only, which share the hash
// tag {p}: they run in one Redis Cluster slot.

// luaStreams defines, for the scripts that need them, idless(a, b):
// whether stream ID a ("<ms>-<seq>") sorts before ID b; and delivered(key,
// group): the last ID the group delivered (nil without the group) and how
// many entries it has read (nil when Redis does not know).
const luaStreams = `
local function idless(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function delivered(key, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, last, read
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1]
      elseif g[i] == 'last-delivered-id' then last = g[i + 1]
      elseif g[i] == 'entries-read' then read = g[i + 1] end
    end
    if name == group then
      return last, read
    end
  end
  return nil
end
`

// luaSeq defines topseq(key): the seq of a history stream's newest entry,
// or, when it has none (an empty or missing stream, or an entry written
// before wsbus numbered events), the count of entries ever added.
const luaSeq = `
local function topseq(key)
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if top then
    local f = top[2]
    for i = 1, #f, 2 do
      if f[i] == 'seq' then
        return tonumber(f[i + 1])
      end
    end
  end
  if redis.call('EXISTS', key) == 0 then
    return 0
  end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then
      return info[i + 1]
    end
  end
  return 0
end
`

// luaKeep defines keepuntil(key, at): extends key's expiry to the unix ms
// at, never shortening it; a key without one gets it, a missing key is
// left alone. at is written with %d: Lua 5.1 would print a number above
// 1e14 with an exponent.
const luaKeep = `
local function keepuntil(key, at)
  local cur = redis.call('PEXPIRETIME', key)
  if cur ~= -2 and cur < at then
    redis.call('PEXPIREAT', key, string.format('%d', at))
  end
end
`

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

// readScript reads, for the partition's owner and fenced by its lease, a
// batch of the entries pending under this consumer: claimed from earlier
// owners (a version of wsbus that read with XREADGROUP, or anything else
// that did; this one never leaves an entry pending). When none are pending it
// returns the group's last delivered ID instead: new entries come after it.
// KEYS: owner, ingress. ARGV: lease value, group, consumer, count.
// Returns the entries, each {id, {field, value, ...}} ({id, nil} for one
// deleted while pending), or that ID.
var readScript = redis.NewScript(luaStreams + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], '0')
if type(r) == 'table' and r.err then
  return r
end
if #r[1][2] > 0 then
  return r[1][2]
end
local last = delivered(KEYS[2], ARGV[2])
if last then
  return last
end
return redis.error_reply('NOGROUP no consumer group ' .. ARGV[2])`)

// claimScript takes over, for the partition's owner, up to a count of the
// entries other consumers (earlier owners) left pending, fenced by the
// lease. KEYS: owner, ingress. ARGV: lease value, group, consumer, start,
// count. Returns the cursor to go on from, "0-0" when done.
var claimScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
return redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'COUNT', ARGV[5], 'JUSTID')[1]`)

// ensureScript makes sure a partition has its ingress stream, consumer
// group and epoch, and that its data has not gone back in time. A group
// that must be created here means the partition's data was lost
// (migrations create every group). A group that has delivered less than
// this node applied under the same epoch went back: a failover before
// replication, a restart from an older snapshot. Entries clients may have
// seen can be gone, or replaced by new ones under the same IDs (a clock
// behind the old one's). Either way the epoch is renewed.
// KEYS: owner, ingress, partition meta. ARGV: lease value, group, new
// epoch, the epoch and the last ID this node applied under it ("" if none).
// Returns {status, epoch}: status 0 as expected, 1 data missing, 2 the
// group went back; the epoch is renewed for 1 and 2.
var ensureScript = redis.NewScript(luaStreams + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
local epoch = redis.call('HGET', KEYS[3], 'epoch')
if type(created) == 'table' and created.ok or created == 'OK' or not epoch then
  redis.call('HSET', KEYS[3], 'epoch', ARGV[3])
  return {1, ARGV[3]}
end
if ARGV[5] ~= '' and epoch == ARGV[4] then
  local last = delivered(KEYS[2], ARGV[2])
  if last and idless(last, ARGV[5]) then
    redis.call('HSET', KEYS[3], 'epoch', ARGV[3])
    return {2, ARGV[3]}
  end
end
return {0, epoch}`)

// applyScript applies one batch of decoded ingress entries, fenced by the
// lease: each history entry is added to its topic stream with the ingress
// ID (an ID not above the stream's top means it was added before: skipped,
// so a replay adds nothing twice), then published; refused entries go to
// the dead-letter stream.
//
// Each history entry gets the next seq of its topic, one more than its
// stream's newest entry (the count of entries ever added when that has
// none), stored with it and put in the published event, which the script
// builds around it: '{"type":"event","id":"<id>","seq":<seq>' and the tail
// from streams.AppendEventTail. A stream created here starts at seq 1, and
// its max-deleted-entry-id is set to that first entry's ID: the mark of
// where this life of the sequence began (see streams.History).
//
// A batch of new entries, read with a plain XREAD after an ID, moves the
// consumer group past it here, in the same step as it is applied (so it is
// never pending): the group must have delivered up to that ID and no
// further, and the first entry after it must be the batch's first, or
// nothing is done (WSBUSTAKE; a group behind that ID can mean the
// partition's data went back in time, which ensureScript checks). Owners
// never wait in a blocking XREADGROUP: Redis would hand the next entry to a
// stale owner still waiting there after its lease expired, and the entry
// would sit in that owner's pending list, where the new owner does not
// look. Moving the group only here, behind the lease check, means a node
// whose lease was lost never takes an entry. (The group is moved with
// XGROUP SETID and its count of entries read, which its lag is computed
// from; where Redis does not know that count, by XREADGROUP, once.) A
// batch of entries already pending (left by an earlier owner) is
// acknowledged.
//
// The topic's acked hash (bus/ack.go) is given the history's expiry in the
// same step, so cursors live as long as the sequence they point into. An
// event with a deadline ("H") joins the partition's deadlines set in the
// same step as its history entry, so once (see deadline.go), and keeps the
// acked hash (creating it, field "due") until the history TTL after it is
// due, so an ack is still there when the deadline is checked.
//
// KEYS: owner, ingress, dead, deadlines, then a topic stream, live channel
// and acked hash per history op. ARGV: lease value, group, max history
// length, history ttl ms, op count, the ID the batch was read after (""
// for pending entries), the batch's last ID, consumer, then per op: "h" id
// data event-tail | "H" id data event-tail due-ms member-tail (the
// deadlines member after "<id> <seq>") | "d" id reason topic data | "a" id.
// Returns the number of entries added to history.
var applyScript = redis.NewScript(luaStreams + luaSeq + luaKeep + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local n, after = tonumber(ARGV[5]), ARGV[6]
if after ~= '' then
  local last, read = delivered(KEYS[2], ARGV[2])
  local first = redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', 1)[1]
  if last ~= after or not first or first[1] ~= ARGV[10] then
    return redis.error_reply('WSBUSTAKE the group is at ' .. tostring(last) .. ', the batch was read after ' .. after)
  end
  if read then
    redis.call('XGROUP', 'SETID', KEYS[2], ARGV[2], ARGV[7], 'ENTRIESREAD', read + n)
  else
    -- Redis does not know how many entries the group has read (a new
    -- group): XREADGROUP works it out, and the batch is acknowledged below.
    local got = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[8], 'COUNT', n, 'STREAMS', KEYS[2], '>')
    local entries = got and got[1][2] or {}
    if #entries ~= n or entries[n][1] ~= ARGV[7] then
      return redis.error_reply('WSBUSTAKE the group holds other entries than those read')
    end
    after = ''
  end
end
local k, a, added = 5, 9, 0
local acks, seqs, cursors = {}, {}, {}
for i = 1, n do
  local kind, id = ARGV[a], ARGV[a + 1]
  if kind == 'h' or kind == 'H' then
    local key = KEYS[k]
    local seq = string.format('%d', (seqs[key] or topseq(key)) + 1)
    local ok = redis.pcall('XADD', key, 'MAXLEN', '~', ARGV[3], id, 'data', ARGV[a + 2], 'seq', seq)
    if type(ok) == 'string' then
      seqs[key] = tonumber(seq)
      if seq == '1' then
        redis.call('XSETID', key, id, 'MAXDELETEDID', id)
      end
      cursors[key] = KEYS[k + 2]
      if kind == 'H' then
        redis.call('ZADD', KEYS[4], ARGV[a + 4], id .. ' ' .. seq .. ARGV[a + 5])
        local d = redis.call('HGET', KEYS[k + 2], 'due')
        if not d or tonumber(d) < tonumber(ARGV[a + 4]) then
          redis.call('HSET', KEYS[k + 2], 'due', ARGV[a + 4])
        end
        keepuntil(KEYS[k + 2], tonumber(ARGV[a + 4]) + tonumber(ARGV[4]))
      end
      redis.call('SPUBLISH', KEYS[k + 1], '{"type":"event","id":"' .. id .. '","seq":' .. seq .. ARGV[a + 3])
      added = added + 1
    end
    k = k + 3
    if kind == 'H' then a = a + 6 else a = a + 4 end
  elseif kind == 'd' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', '*',
      'id', id, 'reason', ARGV[a + 2], 'topic', ARGV[a + 3], 'data', ARGV[a + 4])
    a = a + 5
  else
    a = a + 2
  end
  acks[i] = id
end
if after == '' and n > 0 then
  redis.call('XACK', KEYS[2], ARGV[2], unpack(acks))
end
-- Once per topic of the batch, not per event: the history lives for its
-- ttl after its newest event, and the subjects' cursors at least as long.
-- (A script sees one frozen time, so the expiry is the same as PEXPIRE
-- per event would have set.)
local now
for key, acked in pairs(cursors) do
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  redis.call('PEXPIRE', key, ARGV[4])
  keepuntil(acked, now + tonumber(ARGV[4]))
end
return added`)

// forwardScript moves a misrouted entry to the ingress of its partition,
// fenced by the lease of the partition it was found in. The two keys are in
// different slots, so it only runs on a single Redis; on Redis Cluster the
// lease is checked just before a plain XADD instead (see forward).
// KEYS: owner, target ingress. ARGV: lease value, topic, data, origin,
// deadline ("" for none).
var forwardScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
if ARGV[5] ~= '' then
  return redis.call('XADD', KEYS[2], '*', 'topic', ARGV[2], 'data', ARGV[3], 'forwarded_from', ARGV[4], 'deadline', ARGV[5])
end
return redis.call('XADD', KEYS[2], '*', 'topic', ARGV[2], 'data', ARGV[3], 'forwarded_from', ARGV[4])`)

// trimScript trims the ingress stream to entries newer than ARGV[3], but
// never past the oldest entry still pending, nor past the last one the
// group delivered: XTRIM would drop them unprocessed (a backlog older than
// the retention, say, from while no owner ran).
// KEYS: owner, ingress. ARGV: lease value, group, min ID ("<ms>-0").
var trimScript = redis.NewScript(luaStreams + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local minid = ARGV[3]
local pend = redis.call('XPENDING', KEYS[2], ARGV[2])
if pend[1] > 0 and idless(pend[2], minid) then
  minid = pend[2]
end
local last = delivered(KEYS[2], ARGV[2])
if last and idless(last, minid) then
  minid = last
end
return redis.call('XTRIM', KEYS[2], 'MINID', '~', minid)`)
