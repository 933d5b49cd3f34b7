-- ackScript moves subjects' cursors on one topic forward, never back (see
-- bus/ack.go for the key's layout and life). Each candidate ID must be an
-- event in the topic's history; one below the oldest retained event, when
-- some were trimmed (it may have been one of them), is accepted only when
-- the cursor is already at or past it, as the late ack it then is. The
-- cursors' hash is kept at least until the history's expiry (longer for a
-- deadline still to be checked: see applyScript).
-- KEYS: history, acked. ARGV: per subject: subject, count, then that many
-- IDs, highest first.
-- Returns a status per ID, in order: 0 accepted, 1 bad_id.

local hist, acked = KEYS[1], KEYS[2]

local out, top, oldest = {}, nil, nil
-- trimmed: whether id, not in the history, may have been an event trimmed
-- away: it is below the oldest retained one, and some were removed.
local function trimmed(id)
  if oldest == nil then
    oldest = false
    local ok, info = pcall(redis.call, 'XINFO', 'STREAM', hist)
    if ok then
      local f = {}
      for k = 1, #info, 2 do f[info[k]] = info[k + 1] end
      if f['entries-added'] ~= f['length'] and f['first-entry'] then
        oldest = f['first-entry'][1]
      end
    end
  end
  return oldest and idless(id, oldest)
end
local i = 1
while i <= #ARGV do
  local subject, n = ARGV[i], tonumber(ARGV[i + 1])
  local field = 's:' .. subject
  local cur = redis.call('HGET', acked, field)
  cur = cur and string.match(cur, '^(%S+)')
  for j = 1, n do
    local id = ARGV[i + 1 + j]
    local e = redis.call('XRANGE', hist, id, id)[1]
    if e then
      if not cur or idless(cur, id) then
        local seq = '0'
        for f = 1, #e[2], 2 do
          if e[2][f] == 'seq' then seq = e[2][f + 1] end
        end
        redis.call('HSET', acked, field, id .. ' ' .. seq)
        cur = id
        if not top or idless(top, id) then top = id end
      end
      out[#out + 1] = 0
    elseif cur and not idless(cur, id) and trimmed(id) then
      out[#out + 1] = 0
    else
      out[#out + 1] = 1
    end
  end
  i = i + 2 + n
end
if top then
  local max = redis.call('HGET', acked, 'max')
  if not max or idless(max, top) then
    redis.call('HSET', acked, 'max', top)
  end
  local at = redis.call('PEXPIRETIME', hist)
  if at > 0 then
    keepuntil(acked, at)
  end
end
return out
