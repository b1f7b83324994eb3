-- lease_acquire: take a free lease and open a new term, atomically (jobyard/lease.py).
--
-- KEYS[1] lease key            KEYS[2] term counter (optional)
-- ARGV[1] holder               ARGV[2] ttl ms
--
-- Returns the new term (>= 1) when taken, 0 when taken without a term counter,
-- -1 when someone else (or this holder, from an earlier term) holds it.
-- One script so that a holder can never own the key without a term: a crash between a
-- SET and an INCR would leave a leader whose writes carry the previous leader's token.

if not redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  return -1
end
if #KEYS >= 2 then
  return redis.call("incr", KEYS[2])
end
return 0
