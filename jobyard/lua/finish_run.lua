-- finish_run: record the outcome of an attempt; fenced by the attempt number so a worker that
-- lost its lease (paused, cut off) cannot overwrite the attempt that replaced it.
--
-- KEYS[1] run hash  KEYS[2] run lease  KEYS[3] job history zset  KEYS[4] job active set
-- KEYS[5] dead letters zset  KEYS[6] job slots zset  KEYS[7] job parked list  KEYS[8] parked jobs set
-- KEYS[9] job hash  KEYS[10] wake list  KEYS[11] job's finished runs zset (end ms), for trimming
-- KEYS[12] run log stream
-- ARGV[1] expected attempt ("" = any), optionally "<attempt>|<worker process id>": then a run
--   claimed by another worker process (recorded by _claim.lua as claimed_by) is stale too, even
--   with the same attempt number (a failover that lost our claim, and another worker claimed the
--   run again as the same attempt)
-- ARGV[2] now (epoch s)  ARGV[3] new status
-- ARGV[4] mode: "final" | "retry" | "requeue" | "deadletter"
-- ARGV[5] history size  ARGV[6] key prefix (for trimming old runs)  ARGV[7] terminal statuses
-- ARGV[8..11] the delivered message to ack with the outcome, as dramatiq's "ack" does: queue
--   namespace ("" = none), worker (broker) id, level, message id
-- ARGV[12] n: log lines to append first, then ARGV[13 .. 12+3n] their (t, stream, text)
-- ARGV[13+3n ..] field, value pairs to set (exit_code, error, result, next_attempt_at, ...)
-- Returns {"ok", status} | {"missing"} | {"terminal", status} | {"stale", attempt}
--
-- One call per run end instead of a pipeline of XADDs, this script and dramatiq's ack: the ack
-- happens whatever the outcome (a redelivered message of a finished run is dropped all the same),
-- and log lines are only written to a run that is not finished yet, so a call repeated after a
-- lost reply adds nothing twice.

if ARGV[8] ~= "" then
  local ns, level, mid = ARGV[8], ARGV[10], ARGV[11]
  if redis.call("srem", ns .. ":__acks__." .. ARGV[9] .. "." .. level, mid) > 0 then
    redis.call("hdel", ns .. ":" .. level .. ".msgs", mid)
  end
end
if redis.call("exists", KEYS[1]) == 0 then
  return {"missing"}
end
local terminal = "," .. ARGV[7] .. ","
local status = redis.call("hget", KEYS[1], "status")
if string.find(terminal, "," .. status .. ",", 1, true) then
  return {"terminal", status}
end
local n_lines = tonumber(ARGV[12])
for i = 13, 12 + 3 * n_lines, 3 do
  redis.call("xadd", KEYS[12], "*", "t", ARGV[i], "s", ARGV[i + 1], "m", ARGV[i + 2])
end
local attempt = redis.call("hget", KEYS[1], "attempt") or "0"
local expected, by = ARGV[1], nil
local bar = string.find(expected, "|", 1, true)
if bar then
  expected, by = string.sub(expected, 1, bar - 1), string.sub(expected, bar + 1)
end
if expected ~= "" and attempt ~= expected then
  return {"stale", attempt}
end
local claimed_by = redis.call("hget", KEYS[1], "claimed_by")
if by and claimed_by and claimed_by ~= by then
  return {"stale", attempt}
end

local mode = ARGV[4]
local fields = {"status", ARGV[3]}
for i = 13 + 3 * n_lines, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call("hset", KEYS[1], unpack(fields))
redis.call("del", KEYS[2])

-- The attempt no longer runs: free its concurrency slot and let parked runs of the job back in.
local run_id = redis.call("hget", KEYS[1], "id")
if redis.call("zrem", KEYS[6], run_id) == 1 or redis.call("llen", KEYS[7]) > 0 then
  local limit = tonumber(redis.call("hget", KEYS[9], "max_concurrency") or "0") or 0
  local free = limit - redis.call("zcard", KEYS[6])
  if limit <= 0 then
    free = redis.call("llen", KEYS[7])
  end
  for _ = 1, free do
    local member = redis.call("lpop", KEYS[7])
    if not member then
      break
    end
    local sep = string.find(member, "|", 1, true)
    redis.call("lpush", ARGV[6] .. ":q:" .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
    redis.call("lpush", KEYS[10], "1")
  end
  if redis.call("llen", KEYS[7]) == 0 then
    redis.call("srem", KEYS[8], redis.call("hget", KEYS[1], "job"))
  end
end

if mode == "retry" or mode == "requeue" then
  return {"ok", ARGV[3]}
end

redis.call("hset", KEYS[1], "ended_at", ARGV[2])
redis.call("srem", KEYS[4], redis.call("hget", KEYS[1], "id"))
if mode == "deadletter" then
  redis.call("hset", KEYS[1], "dead_lettered_at", ARGV[2])
  redis.call("zadd", KEYS[5], math.floor(tonumber(ARGV[2]) * 1000), redis.call("hget", KEYS[1], "id"))
end

-- Keep the newest <history size> finished runs (by end time) with their logs. Queued and running
-- runs never count and are never trimmed, so a run that just ended is the last to go; a
-- dead-lettered run leaves the count but keeps its record until its dead letter is purged.
redis.call("zadd", KEYS[11], math.floor(tonumber(ARGV[2]) * 1000), run_id)
local size = tonumber(ARGV[5])
local count = redis.call("zcard", KEYS[11])
if count > size then
  local old = redis.call("zrange", KEYS[11], 0, count - size - 1)
  for _, id in ipairs(old) do
    redis.call("zrem", KEYS[11], id)
    if not redis.call("zscore", KEYS[5], id) then
      local key = ARGV[6] .. ":run:" .. id
      redis.call("del", key, key .. ":log", key .. ":lease")
      redis.call("zrem", KEYS[3], id)
    end
  end
end
return {"ok", ARGV[3]}
