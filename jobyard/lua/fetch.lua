-- fetch: take the next message for a free worker slot, in strict priority order.
--
-- Why our own fetch: dramatiq's Redis consumer runs one consumer per queue, each with its own
-- prefetch, so a worker may sit on low messages while high ones wait. Here one call looks at
-- every level in order (high, normal, low) and takes one message only when a slot is free, so
-- nothing is prefetched and the order holds across any number of workers. The message moves
-- into dramatiq's per-worker ack set exactly as dramatiq's own "fetch" command does, so dramatiq's
-- ack/nack/requeue and its maintenance (re-queueing a dead worker's messages) keep working.
--
-- Delayed messages whose eta has passed are promoted first. When nothing is waiting, the wake
-- list is cleared in the same atomic step: any enqueue after this call pushes a fresh token, so
-- the caller can block on the wake list without missing one.
--
-- Concurrency limits: a message of a job whose ``max_concurrency`` slots are all held (the job's
-- slots zset, one member per running run, scored by lease expiry) is parked on the job's parked
-- list instead of being handed out, and the scan goes on, so a saturated job never occupies a
-- slot or blocks the others. finish_run.lua (and unpark.lua, for slots whose lease expired with
-- a dead worker) put parked messages back at the front of their level.
--
-- Claiming (ARGV[7] not ""): the run of the message handed out is claimed in the same call, as
-- claim_run.lua would (see _claim.lua), which saves the worker a round trip per run.
--
-- KEYS[1] heartbeats zset  KEYS[2] delayed zset  KEYS[3] wake list
-- ARGV[1] queue namespace  ARGV[2] broker id  ARGV[3] now ms  ARGV[4] slot lease ms (also the
-- run lease)  ARGV[5] key prefix  ARGV[6] aging ms (0: strict, no aging)
-- ARGV[7] instance id to claim as ("" = do not claim)  ARGV[8] worker pid  ARGV[9] max deaths
-- ARGV[10] terminal statuses  ARGV[11] now, epoch seconds (the run's started_at)
-- ARGV[12..] levels in priority order
--
-- Aging (off by default, JOBYARD_PRIORITY_AGING_SECONDS): priority is strict, so a steady stream
-- of high runs starves low ones forever. With aging on, a waiting message rises one level per
-- aging period it has waited (by its enqueue time): the oldest message of each lower level is
-- moved to the tail of the level it has risen to before the scan.
-- Returns {level, message id, data[, claim reply]} | {"", next eta ms or ""} | {"", "more"}
-- (scan cut short)

--! include _claim

local ns = ARGV[1]
local broker = ARGV[2]
local now = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local prefix = ARGV[5]
local aging = tonumber(ARGV[6])
local first_level = 12

-- Reserve a concurrency slot for the message's run; false when the job is at its limit.
-- Returns free, job, run id (job and run id nil when the message does not name them).
local function reserve(data)
  local ok, msg = pcall(cjson.decode, data)
  if not ok or type(msg) ~= "table" or type(msg["args"]) ~= "table" then
    return true
  end
  local run_id, job = msg["args"][1], msg["args"][2]
  if type(job) ~= "string" or type(run_id) ~= "string" then
    return true
  end
  local limit = tonumber(redis.call("hget", prefix .. ":job:" .. job, "max_concurrency") or "0") or 0
  if limit <= 0 then
    return true, job, run_id
  end
  local slots = prefix .. ":job:" .. job .. ":slots"
  redis.call("zremrangebyscore", slots, "-inf", now)
  if not redis.call("zscore", slots, run_id) and redis.call("zcard", slots) >= limit then
    return false, job
  end
  redis.call("zadd", slots, now + lease, run_id)
  return true, job, run_id
end
redis.call("zadd", KEYS[1], now, broker)

local due = redis.call("zrangebyscore", KEYS[2], "-inf", now, "LIMIT", 0, 100)
for _, member in ipairs(due) do
  local sep = string.find(member, "|", 1, true)
  local level = string.sub(member, 1, sep - 1)
  local mid = string.sub(member, sep + 1)
  redis.call("zrem", KEYS[2], member)
  redis.call("rpush", ns .. ":" .. level, mid)
end

if aging > 0 then
  for i = first_level + 1, #ARGV do
    local level = ARGV[i]
    local queue = ns .. ":" .. level
    local mid = redis.call("lindex", queue, 0)
    local data = mid and redis.call("hget", queue .. ".msgs", mid)
    if data then
      local ok, msg = pcall(cjson.decode, data)
      local origin = i - first_level
      if ok and type(msg) == "table" then
        for j = first_level, #ARGV do
          if ARGV[j] == msg["queue_name"] then
            origin = j - first_level
          end
        end
        local risen = math.floor((now - (tonumber(msg["message_timestamp"]) or now)) / aging)
        local target = math.max(0, origin - risen)
        if target < i - first_level then
          local to = ns .. ":" .. ARGV[first_level + target]
          redis.call("lpop", queue)
          redis.call("hdel", queue .. ".msgs", mid)
          redis.call("hset", to .. ".msgs", mid, data)
          redis.call("rpush", to, mid)
        end
      end
    end
  end
end

local cut_short = false
for i = first_level, #ARGV do
  local level = ARGV[i]
  local queue = ns .. ":" .. level
  local scanned = 0
  while true do
    local mid = redis.call("lpop", queue)
    if not mid then
      break
    end
    scanned = scanned + 1
    local data = redis.call("hget", queue .. ".msgs", mid)
    if data then
      local free, job, run_id = reserve(data)
      if free then
        redis.call("sadd", ns .. ":__acks__." .. broker .. "." .. level, mid)
        if ARGV[7] == "" or not run_id then
          return {level, mid, data}
        end
        local run = prefix .. ":run:" .. run_id
        local reply = claim(run, run .. ":lease", prefix .. ":job:" .. job, prefix .. ":job:" .. job .. ":slots",
          prefix .. ":secrets:" .. job, broker, ARGV[7], ARGV[8], ARGV[11], lease, ARGV[9], ARGV[10])
        return {level, mid, data, reply}
      end
      redis.call("rpush", prefix .. ":job:" .. job .. ":parked", level .. "|" .. mid)
      redis.call("sadd", prefix .. ":parked", job)
    end
    -- an id without a body was purged: dropped. Bound the work of one call either way.
    if scanned >= 100 then
      cut_short = true
      break
    end
  end
  if cut_short then
    return {"", "more"}
  end
end

redis.call("del", KEYS[3])
local nxt = redis.call("zrange", KEYS[2], 0, 0, "WITHSCORES")
if nxt[2] then
  return {"", nxt[2]}
end
return {"", ""}
