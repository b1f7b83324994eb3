-- take_due: take the first member of a "due at" zset whose time has come, and hide it for a
-- visibility timeout instead of removing it, so a sender that dies mid-delivery leaves it to be
-- taken again (at-least-once). The sender removes it when done.
--
-- KEYS[1] zset  ARGV[1] now ms  ARGV[2] visibility ms
-- Returns the member, or false when nothing is due.

local due = redis.call("zrangebyscore", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, 1)
if not due[1] then
  return false
end
redis.call("zadd", KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[1])
return due[1]
