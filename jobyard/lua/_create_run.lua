-- create: write one run record and put its message on the queue (shared by create_run.lua, one
-- run a call, and create_many.lua, many runs a call: each run goes through exactly this).
--
-- K[k+1..k+11]: the run's keys, A[a+1..a+11]: its arguments, A[a+12..last]: its hash fields,
-- as create_run.lua documents them (KEYS and ARGV there).
-- Returns {"created", id} | {"exists", id} | {"nojob"} | {"stale"} | {"fenced", term} |
--         {"duplicate", recorded} | {"overlap", active id}
local function create(K, k, A, a, last)
  local job_key, run_key, runs_key, active_key = K[k + 1], K[k + 2], K[k + 3], K[k + 4]
  local queue_key, msgs_key, delayed_key, wake_key = K[k + 5], K[k + 6], K[k + 7], K[k + 8]
  local idem_key, fire_key, term_key = K[k + 9], K[k + 10], K[k + 11]
  local run_id, now_ms, message_id, message = A[a + 1], A[a + 2], A[a + 3], A[a + 4]
  local level, eta_ms, idem_ttl_ms, term = A[a + 5], A[a + 6], A[a + 7], A[a + 8]
  local fire_ttl_ms, overlap, job_updated_at = A[a + 9], A[a + 10], A[a + 11]

  if redis.call("exists", job_key) == 0 then
    return {"nojob"}
  end

  if job_updated_at ~= "" then
    local stored = redis.call("hget", job_key, "updated_at")
    if tonumber(stored or "0") ~= tonumber(job_updated_at) then
      return {"stale"}
    end
  end

  if idem_key ~= "" then
    local existing = redis.call("get", idem_key)
    if existing then
      -- A key whose run was trimmed from history no longer holds anything back.
      local prefix_end = string.find(run_key, ":run:", 1, true)
      local existing_key = string.sub(run_key, 1, prefix_end) .. "run:" .. existing
      if redis.call("exists", existing_key) == 1 then
        return {"exists", existing}
      end
    end
  end

  if term_key ~= "" and term ~= "" then
    local current = redis.call("get", term_key) or "0"
    if current ~= term then
      return {"fenced", current}
    end
  end

  if overlap == "skip" then
    local active = redis.call("srandmember", active_key)
    if active then
      if fire_key ~= "" then
        redis.call("set", fire_key, "skipped:" .. active, "NX", "PX", fire_ttl_ms)
      end
      return {"overlap", active}
    end
  end

  if fire_key ~= "" then
    local ok = redis.call("set", fire_key, run_id, "NX", "PX", fire_ttl_ms)
    if not ok then
      return {"duplicate", redis.call("get", fire_key)}
    end
  end

  redis.call("hset", run_key, unpack(A, a + 12, last))
  redis.call("zadd", runs_key, now_ms, run_id)
  redis.call("sadd", active_key, run_id)
  if idem_key ~= "" then
    redis.call("set", idem_key, run_id, "PX", idem_ttl_ms)
  end

  redis.call("hset", msgs_key, message_id, message)
  if tonumber(eta_ms) > tonumber(now_ms) then
    redis.call("zadd", delayed_key, eta_ms, level .. "|" .. message_id)
  else
    redis.call("rpush", queue_key, message_id)
  end
  redis.call("lpush", wake_key, "1")
  redis.call("ltrim", wake_key, 0, 999)
  return {"created", run_id}
end
