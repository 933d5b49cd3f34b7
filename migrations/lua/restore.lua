-- restore writes back the meta of a bus that is being served but whose
-- <prefix>:meta Redis lost (a restart without persistence, a flush): the
-- partition count and schema version its gateways serve. A meta that has
-- its partition count is left alone.
-- KEYS: bus meta. ARGV: partitions, schema version.
-- Returns 1 when it wrote them, 0 when they were there.

local meta = KEYS[1]
if redis.call('HEXISTS', meta, 'partitions') == 1 then
  return 0
end
redis.call('HSET', meta, 'partitions', ARGV[1], 'schema', ARGV[2])
return 1
