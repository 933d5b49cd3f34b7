-- applyScript applies one batch of decoded ingress entries, fenced by the
-- lease: each history entry is added to its topic stream with the ingress
-- ID (an ID not above the stream's top means it was added before: skipped,
-- so a replay adds nothing twice), then published; refused entries go to
-- the dead-letter stream.
--
-- Each history entry gets the next seq of its topic, one more than its
-- stream's newest entry (the count of entries ever added when that has
-- none), stored with it and put in the published event, which the script
-- builds around it: '{"type":"event","id":"<id>","seq":<seq>' and the tail
-- from streams.AppendEventTail. A stream created here starts at seq 1, and
-- its max-deleted-entry-id is set to that first entry's ID: the mark of
-- where this life of the sequence began (see streams.History).
--
-- A batch of new entries, read with a plain XREAD after an ID, moves the
-- consumer group past it here, in the same step as it is applied (so it is
-- never pending; the move is the script's last write, so a script that
-- fails on the way leaves the batch to be read again): the group must have delivered up to that ID and no
-- further, and the first entry after it must be the batch's first, or
-- nothing is done (WSBUSTAKE; a group behind that ID can mean the
-- partition's data went back in time, which ensureScript checks). Owners
-- never wait in a blocking XREADGROUP: Redis would hand the next entry to a
-- stale owner still waiting there after its lease expired, and the entry
-- would sit in that owner's pending list, where the new owner does not
-- look. Moving the group only here, behind the lease check, means a node
-- whose lease was lost never takes an entry. (The group is moved with
-- XGROUP SETID and its count of entries read, which its lag is computed
-- from; where Redis does not know that count, by XREADGROUP, once.) A
-- batch of entries already pending (left by an earlier owner) is
-- acknowledged.
--
-- The topic's acked hash (bus/ack.go) is given the history's expiry in the
-- same step, so cursors live as long as the sequence they point into. An
-- event with a deadline ("H") joins the partition's deadlines set in the
-- same step as its history entry, so once (see bus/deadline.go), and keeps the
-- acked hash (creating it, field "due") until the history TTL after it is
-- due, so an ack is still there when the deadline is checked.
--
-- A key the batch writes that holds another type (a topic's history
-- taken by a string, say) is checked where it is first written, before
-- its op writes anything: an event whose history (or, with a deadline,
-- acked hash or deadlines set) has the wrong type is dead-lettered with
-- the reason, and the others are applied. A dead-letter stream of the
-- wrong type, or any write Redis refuses, ends the script before the
-- group moves (WSBUSKEY, or Redis's error): the batch is read again and
-- what was written of it is skipped as replayed.
--
-- KEYS: owner, ingress, dead, deadlines, then a topic stream, live channel
-- and acked hash per history op. ARGV: lease value, group, max history
-- length, history ttl ms, op count, the ID the batch was read after (""
-- for pending entries), the batch's last ID, consumer, then per op: "h" id
-- data event-tail | "H" id data event-tail due-ms member-tail (the
-- deadlines member after "<id> <seq>") | "d" id reason topic data | "a" id.
-- Returns the number of entries added to history and the number
-- dead-lettered for a key of the wrong type.

local owner, ingress, dead, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lease, group, maxlen, ttl, count, after, batchlast, consumer =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
-- The ops start at ARGV[9]; the batch's first ID is the first op's.
local batchfirst = ARGV[10]

if redis.call('GET', owner) ~= lease then
  return redis.error_reply('WSBUSLEASE lease lost')
end
local n = tonumber(count)

-- The type of each key the batch writes, checked where it is first
-- written (once a batch per key).
local types = {}
local function wrongtype(key, want)
  local t = types[key]
  if not t then
    t = redis.call('TYPE', key)['ok']
    types[key] = t
  end
  if t ~= 'none' and t ~= want then
    return 'the key ' .. key .. ' holds a ' .. t .. ', not a ' .. want
  end
end
-- deadletter adds an entry to the dead-letter stream; a stream that holds
-- another type refuses the batch (WSBUSKEY), read again later.
local function deadletter(id, reason, topic, data)
  local why = wrongtype(dead, 'stream')
  if why then
    error({err = 'WSBUSKEY cannot dead-letter: ' .. why})
  end
  redis.call('XADD', dead, 'MAXLEN', '~', '10000', '*',
    'id', id, 'reason', reason, 'topic', topic, 'data', data)
end

local setread -- the group's count of entries read, when the batch moves it
if after ~= '' then
  local last, read = delivered(ingress, group)
  local first = redis.call('XRANGE', ingress, '(' .. after, '+', 'COUNT', 1)[1]
  if last ~= after or not first or first[1] ~= batchfirst then
    return redis.error_reply('WSBUSTAKE the group is at ' .. tostring(last) .. ', the batch was read after ' .. after)
  end
  setread = read
  if not read then
    -- Redis does not know how many entries the group has read (a new
    -- group): XREADGROUP works it out, and the batch is acknowledged below.
    local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', ingress, '>')
    local entries = got and got[1][2] or {}
    if #entries ~= n or entries[n][1] ~= batchlast then
      return redis.error_reply('WSBUSTAKE the group holds other entries than those read')
    end
    after = ''
  end
end
-- The group is moved past the batch (at the end), once everything else is
-- written: an error on the way aborts the script with the group where it
-- was, and the batch is read again; what was written before the error is
-- then skipped as replayed.
local k, a, added, deadkeys = 5, 9, 0, 0
local acks, seqs, cursors = {}, {}, {}
for i = 1, n do
  local kind, id = ARGV[a], ARGV[a + 1]
  -- Only an event with a deadline writes its acked hash and the deadlines
  -- set (the hash's expiry alone works on any type).
  local broken = (kind == 'h' or kind == 'H') and (wrongtype(KEYS[k], 'stream') or
    (kind == 'H' and (wrongtype(KEYS[k + 2], 'hash') or wrongtype(deadlines, 'zset'))))
  if broken then
    deadletter(id, broken, string.match(KEYS[k], '^.-}:topic:(.*)$') or '', ARGV[a + 2])
    deadkeys = deadkeys + 1
    k = k + 3
    if kind == 'H' then a = a + 6 else a = a + 4 end
  elseif kind == 'h' or kind == 'H' then
    local hist, live, acked = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local data, tail = ARGV[a + 2], ARGV[a + 3]
    local seq = string.format('%d', (seqs[hist] or topseq(hist)) + 1)
    local ok = redis.pcall('XADD', hist, 'MAXLEN', '~', maxlen, id, 'data', data, 'seq', seq)
    if type(ok) == 'table' and ok.err and not string.find(ok.err, 'equal or smaller', 1, true) then
      -- Not a replay (an ID at or below the stream's top): Redis refused
      -- the write (out of memory before anything was written, say). The
      -- batch is not taken: it is read and applied again later.
      return redis.error_reply(ok.err)
    end
    if type(ok) == 'string' then
      seqs[hist] = tonumber(seq)
      if seq == '1' then
        redis.call('XSETID', hist, id, 'MAXDELETEDID', id)
      end
      cursors[hist] = acked
      if kind == 'H' then
        local dueat, membertail = ARGV[a + 4], ARGV[a + 5]
        redis.call('ZADD', deadlines, dueat, id .. ' ' .. seq .. membertail)
        local d = redis.call('HGET', acked, 'due')
        if not d or tonumber(d) < tonumber(dueat) then
          redis.call('HSET', acked, 'due', dueat)
        end
        keepuntil(acked, tonumber(dueat) + tonumber(ttl))
      end
      redis.call('SPUBLISH', live, '{"type":"event","id":"' .. id .. '","seq":' .. seq .. tail)
      added = added + 1
    end
    k = k + 3
    if kind == 'H' then a = a + 6 else a = a + 4 end
  elseif kind == 'd' then
    deadletter(id, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
    a = a + 5
  else
    a = a + 2
  end
  acks[i] = id
end
if setread then
  redis.call('XGROUP', 'SETID', ingress, group, batchlast, 'ENTRIESREAD', setread + n)
elseif after == '' and n > 0 then
  redis.call('XACK', ingress, group, unpack(acks))
end
-- Once per topic of the batch, not per event: the history lives for its
-- ttl after its newest event, and the subjects' cursors at least as long.
-- (A script sees one frozen time, so the expiry is the same as PEXPIRE
-- per event would have set.)
local now
for hist, acked in pairs(cursors) do
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  redis.call('PEXPIRE', hist, ttl)
  keepuntil(acked, now + tonumber(ttl))
end
return {added, deadkeys}
