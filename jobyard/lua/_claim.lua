-- claim: the atomic claim that makes execution exactly-once per attempt (shared by claim_run.lua
-- and fetch.lua, which claims the run of the message it hands out in the same call).
--
-- A delivered message is only executed after this succeeds. Terminal runs are dropped (a
-- redelivered message for a finished run); a run whose lease is alive is running elsewhere; a run
-- marked running whose lease expired lost its worker: that costs an attempt (a "death") and after
-- max deaths the run is dead-lettered instead of run again.
--
-- run_key, lease_key, job_key: the run hash, its lease, the job hash (read back for the worker)
-- slots_key: the job's slots zset (a slot fetch.lua reserved is given back when the run will not run)
-- secrets_key: the job's secrets hash (read back with the claim: saves a round trip per run)
-- worker: worker process id; instance, pid: recorded on the run; now_s: epoch seconds
-- lease_ms; max_deaths; terminal: terminal statuses, comma-separated
-- Returns {"claimed", run fields, job fields, secret fields} | {"missing"} | {"terminal", status} |
--         {"busy", holder} | {"cancelled"} | {"dead", deaths} | {"nojob"}
local function claim(run_key, lease_key, job_key, slots_key, secrets_key, worker, instance, pid, now_s,
                     lease_ms, max_deaths, terminal)
  if redis.call("exists", run_key) == 0 then
    return {"missing"}
  end
  local status = redis.call("hget", run_key, "status")
  if string.find("," .. terminal .. ",", "," .. status .. ",", 1, true) then
    redis.call("zrem", slots_key, redis.call("hget", run_key, "id"))
    return {"terminal", status}
  end
  if redis.call("hget", run_key, "cancel_requested") == "1" then
    return {"cancelled"}
  end
  if status == "running" then
    local holder = redis.call("get", lease_key)
    if holder then
      return {"busy", holder}
    end
    local deaths = redis.call("hincrby", run_key, "deaths", 1)
    if deaths >= tonumber(max_deaths) then
      return {"dead", tostring(deaths)}
    end
  end
  if redis.call("exists", job_key) == 0 then
    return {"nojob"}
  end
  redis.call("hincrby", run_key, "attempt", 1)
  redis.call("hset", run_key, "status", "running", "worker", instance, "worker_pid", pid, "started_at", now_s,
    "claimed_by", worker)
  redis.call("hdel", run_key, "next_attempt_at", "ended_at")
  redis.call("set", lease_key, worker, "PX", lease_ms)
  return {"claimed", redis.call("hgetall", run_key), redis.call("hgetall", job_key), redis.call("hgetall", secrets_key)}
end
