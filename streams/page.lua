-- A page of a topic's history: up to ARGV[2] entries from ARGV[1] on, and
-- no entry more once their data would pass ARGV[3] bytes (the first entry
-- comes whatever its size). XRANGE is called in chunks sized by the room
-- left and the largest entry seen, so that Redis reads few entries past
-- the page, and sends none.
--
-- KEYS[1]: the topic's history stream
-- ARGV[1]: where to start, as XRANGE takes it: "-", or "(" and an ID
-- ARGV[2]: the most entries
-- ARGV[3]: the most bytes of their data fields
--
-- Returns {more, entries}: more is 1 when the page ended at one of its
-- bounds rather than at the end of the stream; entries as XRANGE gives
-- them.
local key, start = KEYS[1], ARGV[1]
local left, room = tonumber(ARGV[2]), tonumber(ARGV[3])
local page, largest, n = {}, 0, 4
while left > 0 do
  n = math.min(n, left)
  local entries = redis.call('XRANGE', key, start, '+', 'COUNT', n)
  for _, e in ipairs(entries) do
    local size, fields = 0, e[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'data' then
        size = #fields[i + 1]
      end
    end
    if size > room and #page > 0 then
      return {1, page}
    end
    room, largest = room - size, math.max(largest, size)
    page[#page + 1] = e
  end
  if #entries < n then
    return {0, page}
  end
  left = left - n
  start = '(' .. entries[#entries][1]
  n = math.max(1, math.min(128, math.floor(room / math.max(largest, 1)) + 1))
end
return {1, page}
