-- lease_release: compare-and-delete (jobyard/lease.py).
--
-- KEYS[1] lease key   ARGV[1] holder
-- Returns 1 when deleted, 0 when the key is gone or belongs to another holder.

if redis.call("get", KEYS[1]) == ARGV[1] then
  redis.call("del", KEYS[1])
  return 1
end
return 0
