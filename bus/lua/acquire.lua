-- acquireScript takes the lease of a partition when it is free (or already
-- ours) and returns its fencing token, or nil. A new owner's token is one
-- more than any before it.
-- KEYS: owner, partition meta. ARGV: node, ttl ms.

local owner, meta = KEYS[1], KEYS[2]
local node, ttl = ARGV[1], ARGV[2]

local cur = redis.call('GET', owner)
if cur then
  local holder, token = string.match(cur, '^(.*) (%d+)$')
  if holder == node then
    redis.call('PEXPIRE', owner, ttl)
    return tonumber(token)
  end
  return false
end
local token = redis.call('HINCRBY', meta, 'fence', 1)
local t = redis.call('TIME')
redis.call('HSET', meta, 'changed', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('SET', owner, node .. ' ' .. token, 'PX', ttl)
return token
