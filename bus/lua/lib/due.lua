-- A prelude: due(member), the fields of a member of Keys.Deadlines,
-- "<id> <seq> <deadline> <topic> <data>" (a topic has no spaces; data is
-- the rest, possibly empty): id, seq, deadline, topic, data.

local function due(m)
  return string.match(m, '^(%S+) (%d+) (%d+) (%S+) (.*)$')
end
