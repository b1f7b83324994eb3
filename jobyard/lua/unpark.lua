-- unpark: maintenance for concurrency limits. A slot whose lease expired (its worker died) is
-- freed here, and as many parked runs as there are free slots go back to the front of their
-- level. Normal releases happen in finish_run.lua; this only catches what a dead worker left.
--
-- KEYS[1] parked jobs set  KEYS[2] wake list
-- ARGV[1] key prefix  ARGV[2] now ms
-- Returns the number of runs put back.

local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local moved = 0
local jobs = redis.call("srandmember", KEYS[1], 50)
for _, job in ipairs(jobs) do
  local slots = prefix .. ":job:" .. job .. ":slots"
  local parked = prefix .. ":job:" .. job .. ":parked"
  redis.call("zremrangebyscore", slots, "-inf", now)
  local limit = tonumber(redis.call("hget", prefix .. ":job:" .. job, "max_concurrency") or "0") or 0
  local free = limit - redis.call("zcard", slots)
  if limit <= 0 then
    free = redis.call("llen", parked)
  end
  for _ = 1, free do
    local member = redis.call("lpop", parked)
    if not member then
      break
    end
    local sep = string.find(member, "|", 1, true)
    redis.call("lpush", prefix .. ":q:" .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
    redis.call("lpush", KEYS[2], "1")
    moved = moved + 1
  end
  if redis.call("llen", parked) == 0 then
    redis.call("srem", KEYS[1], job)
  end
end
return moved
