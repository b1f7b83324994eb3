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
-- KEYS[1] heartbeats zset  KEYS[2] delayed zset  KEYS[3] wake list
-- ARGV[1] queue namespace  ARGV[2] broker id  ARGV[3] now ms  ARGV[4..] levels in priority order
-- Returns {level, message id, data} | {"", next eta ms or ""}

local ns = ARGV[1]
local broker = ARGV[2]
local now = tonumber(ARGV[3])
redis.call("zadd", KEYS[1], now, broker)

local due = redis.call("zrangebyscore", KEYS[2], "-inf", now, "LIMIT", 0, 100)
for _, member in ipairs(due) do
  local sep = string.find(member, "|", 1, true)
  local level = string.sub(member, 1, sep - 1)
  local mid = string.sub(member, sep + 1)
  redis.call("zrem", KEYS[2], member)
  redis.call("rpush", ns .. ":" .. level, mid)
end

for i = 4, #ARGV do
  local level = ARGV[i]
  local queue = ns .. ":" .. level
  for _ = 1, 100 do
    local mid = redis.call("lpop", queue)
    if not mid then
      break
    end
    local data = redis.call("hget", queue .. ".msgs", mid)
    if data then
      redis.call("sadd", ns .. ":__acks__." .. broker .. "." .. level, mid)
      return {level, mid, data}
    end
    -- an id without a body was purged: drop it and look further
  end
end

redis.call("del", KEYS[3])
local nxt = redis.call("zrange", KEYS[2], 0, 0, "WITHSCORES")
if nxt[2] then
  return {"", nxt[2]}
end
return {"", ""}
