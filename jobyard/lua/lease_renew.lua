-- lease_renew: compare-and-extend (jobyard/lease.py).
--
-- KEYS[1] lease key   ARGV[1] holder   ARGV[2] ttl ms
-- Returns 1 when extended, 0 when the key is gone or belongs to another holder.
-- A lease that expired is never re-created here: the holder must acquire again and so open
-- a new term, because another holder may have acted in between.

if redis.call("get", KEYS[1]) == ARGV[1] then
  redis.call("pexpire", KEYS[1], ARGV[2])
  return 1
end
return 0
