-- renewScript extends a lease that is still ours.
-- KEYS: owner. ARGV: lease value, ttl ms.
-- Returns 1, or 0 when the lease was lost.

local owner = KEYS[1]
local lease, ttl = ARGV[1], ARGV[2]

if redis.call('GET', owner) == lease then
  return redis.call('PEXPIRE', owner, ttl)
end
return 0
