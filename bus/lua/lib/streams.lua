-- A prelude: the functions of stream IDs and consumer groups that several
-- scripts share.
--
-- idless(a, b): whether stream ID a ("<ms>-<seq>") sorts before ID b.
--
-- delivered(key, group): the last ID the group delivered (nil without the
-- group) and how many entries it has read (nil when Redis does not know).

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
