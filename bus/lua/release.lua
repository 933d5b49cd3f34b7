-- releaseScript deletes a lease that is still ours.
-- KEYS: owner. ARGV: lease value.
-- Returns 1, or 0 when the lease was not ours.

local owner = KEYS[1]
local lease = ARGV[1]

if redis.call('GET', owner) == lease then
  return redis.call('DEL', owner)
end
return 0
