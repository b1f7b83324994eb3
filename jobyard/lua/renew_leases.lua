-- renew_leases: compare-and-extend every lease this worker holds, in one call.
--
-- KEYS: the lease keys.  ARGV[1] worker process id  ARGV[2] lease ms
-- Returns the 1-based indexes of leases now held by someone else.

local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call("get", key)
  if holder == ARGV[1] then
    redis.call("pexpire", key, ARGV[2])
  elseif not holder then
    -- expired while we were slow, and nobody claimed the run since: take it back
    redis.call("set", key, ARGV[1], "PX", ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
