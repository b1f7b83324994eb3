-- create_run: write a run record and put its message on the queue, atomically.
-- Used by the API (single and batch enqueue), the scheduler (fires) and retries of finished runs.
--
-- KEYS[1]  job hash                P:job:<name>          (must exist)
-- KEYS[2]  run hash                P:run:<id>
-- KEYS[3]  job history zset        P:job:<name>:runs
-- KEYS[4]  job active set          P:job:<name>:active
-- KEYS[5]  queue list              P:q:<level>
-- KEYS[6]  queue messages hash     P:q:<level>.msgs
-- KEYS[7]  delayed zset            P:q:delayed
-- KEYS[8]  wake list               P:q:wake
-- KEYS[9]  idempotency key         P:idem:<job>:<key>    ("" when none)
-- KEYS[10] fire key                P:fire:<job>:<ts>     ("" when not a scheduled fire)
-- KEYS[11] leader term counter     P:leader:term         ("" when not fenced)
--
-- ARGV[1] run id      ARGV[2] now ms        ARGV[3] message id   ARGV[4] encoded message
-- ARGV[5] level       ARGV[6] eta ms (0 = now)                  ARGV[7] idempotency ttl ms
-- ARGV[8] fencing term expected ("" = none)  ARGV[9] fire record ttl ms
-- ARGV[10] overlap ("skip" refuses while the job has an active run; anything else: no check)
-- ARGV[11] the job's updated_at as the caller knows it ("" = no check): the caller built the run
--          from a cached job record, which is still the job only while updated_at is unchanged
--          (every deploy and settings change sets it); else "stale" and nothing is written
-- ARGV[12..] run hash field, value pairs
--
-- Returns {"created", id} | {"exists", id} | {"nojob"} | {"stale"} | {"fenced", term} |
--         {"duplicate", recorded} | {"overlap", active id}

if redis.call("exists", KEYS[1]) == 0 then
  return {"nojob"}
end

if ARGV[11] ~= "" then
  local stored = redis.call("hget", KEYS[1], "updated_at")
  if tonumber(stored or "0") ~= tonumber(ARGV[11]) then
    return {"stale"}
  end
end

local run_id = ARGV[1]

if KEYS[9] ~= "" then
  local existing = redis.call("get", KEYS[9])
  if existing then
    -- A key whose run was trimmed from history no longer holds anything back.
    local prefix_end = string.find(KEYS[2], ":run:", 1, true)
    local existing_key = string.sub(KEYS[2], 1, prefix_end) .. "run:" .. existing
    if redis.call("exists", existing_key) == 1 then
      return {"exists", existing}
    end
  end
end

if KEYS[11] ~= "" and ARGV[8] ~= "" then
  local term = redis.call("get", KEYS[11]) or "0"
  if term ~= ARGV[8] then
    return {"fenced", term}
  end
end

if ARGV[10] == "skip" then
  local active = redis.call("srandmember", KEYS[4])
  if active then
    if KEYS[10] ~= "" then
      redis.call("set", KEYS[10], "skipped:" .. active, "NX", "PX", ARGV[9])
    end
    return {"overlap", active}
  end
end

if KEYS[10] ~= "" then
  local ok = redis.call("set", KEYS[10], run_id, "NX", "PX", ARGV[9])
  if not ok then
    return {"duplicate", redis.call("get", KEYS[10])}
  end
end

local fields = {}
for i = 12, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call("hset", KEYS[2], unpack(fields))
redis.call("zadd", KEYS[3], ARGV[2], run_id)
redis.call("sadd", KEYS[4], run_id)
if KEYS[9] ~= "" then
  redis.call("set", KEYS[9], run_id, "PX", ARGV[7])
end

redis.call("hset", KEYS[6], ARGV[3], ARGV[4])
if tonumber(ARGV[6]) > tonumber(ARGV[2]) then
  redis.call("zadd", KEYS[7], ARGV[6], ARGV[5] .. "|" .. ARGV[3])
else
  redis.call("rpush", KEYS[5], ARGV[3])
end
redis.call("lpush", KEYS[8], "1")
redis.call("ltrim", KEYS[8], 0, 999)
return {"created", run_id}
