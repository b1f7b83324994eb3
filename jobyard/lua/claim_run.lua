-- claim_run: the atomic claim that makes execution exactly-once per attempt.
--
-- A delivered message is only executed after this succeeds. Terminal runs are dropped (a
-- redelivered message for a finished run); a run whose lease is alive is running elsewhere; a run
-- marked running whose lease expired lost its worker: that costs an attempt (a "death") and after
-- max deaths the run is dead-lettered instead of run again.
--
-- KEYS[1] run hash  KEYS[2] run lease  KEYS[3] job hash (read back for the worker)
-- KEYS[4] job slots zset (a slot fetch.lua reserved is given back when the run will not run)
-- KEYS[5] job secrets hash (read back with the claim: saves a round trip per run)
-- ARGV[1] worker process id  ARGV[2] instance id  ARGV[3] pid  ARGV[4] now (epoch s)
-- ARGV[5] lease ms  ARGV[6] max deaths  ARGV[7] terminal statuses, comma-separated
-- Returns {"claimed", run fields, job fields, secret fields} | {"missing"} | {"terminal", status} |
--         {"busy", holder} | {"cancelled"} | {"dead", deaths} | {"nojob"}

if redis.call("exists", KEYS[1]) == 0 then
  return {"missing"}
end
local status = redis.call("hget", KEYS[1], "status")
if string.find("," .. ARGV[7] .. ",", "," .. status .. ",", 1, true) then
  redis.call("zrem", KEYS[4], redis.call("hget", KEYS[1], "id"))
  return {"terminal", status}
end
if redis.call("hget", KEYS[1], "cancel_requested") == "1" then
  return {"cancelled"}
end
if status == "running" then
  local holder = redis.call("get", KEYS[2])
  if holder then
    return {"busy", holder}
  end
  local deaths = redis.call("hincrby", KEYS[1], "deaths", 1)
  if deaths >= tonumber(ARGV[6]) then
    return {"dead", tostring(deaths)}
  end
end
if redis.call("exists", KEYS[3]) == 0 then
  return {"nojob"}
end
redis.call("hincrby", KEYS[1], "attempt", 1)
redis.call("hset", KEYS[1], "status", "running", "worker", ARGV[2], "worker_pid", ARGV[3],
  "started_at", ARGV[4])
redis.call("hdel", KEYS[1], "next_attempt_at", "ended_at")
redis.call("set", KEYS[2], ARGV[1], "PX", ARGV[5])
return {"claimed", redis.call("hgetall", KEYS[1]), redis.call("hgetall", KEYS[3]), redis.call("hgetall", KEYS[5])}
