-- A prelude: keepuntil(key, at) extends key's expiry to the unix ms at,
-- never shortening it; a key without one gets it, a missing key is left
-- alone. at is written with %d: Lua 5.1 would print a number above 1e14
-- with an exponent.

local function keepuntil(key, at)
  local cur = redis.call('PEXPIRETIME', key)
  if cur ~= -2 and cur < at then
    redis.call('PEXPIREAT', key, string.format('%d', at))
  end
end
