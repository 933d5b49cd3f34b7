-- A prelude: topseq(key), the seq of a history stream's newest entry, or,
-- when it has none (an empty or missing stream, or an entry written before
-- wsbus numbered events), the count of entries ever added.

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
