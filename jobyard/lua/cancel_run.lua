-- cancel_run: a queued or retrying run becomes cancelled at once (its message is dropped at
-- claim); a running run is flagged and its worker is told over pub/sub (and sees the flag when it
-- renews the lease, should the message be missed).
--
-- KEYS[1] run hash  KEYS[2] job active set  KEYS[3] cancel channel
-- ARGV[1] now (epoch s)  ARGV[2] terminal statuses
-- Returns {"cancelled"} | {"signalled", worker} | {"terminal", status} | {"missing"}

if redis.call("exists", KEYS[1]) == 0 then
  return {"missing"}
end
local status = redis.call("hget", KEYS[1], "status")
if string.find("," .. ARGV[2] .. ",", "," .. status .. ",", 1, true) then
  return {"terminal", status}
end
local id = redis.call("hget", KEYS[1], "id")
redis.call("hset", KEYS[1], "cancel_requested", "1")
if status == "running" then
  redis.call("publish", KEYS[3], id)
  return {"signalled", redis.call("hget", KEYS[1], "worker") or ""}
end
redis.call("hset", KEYS[1], "status", "cancelled", "ended_at", ARGV[1], "error", "cancelled before it started")
redis.call("srem", KEYS[2], id)
return {"cancelled"}
