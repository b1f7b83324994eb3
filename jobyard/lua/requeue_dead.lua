-- requeue_dead: dramatiq's maintenance, with a dead worker's messages put back at the FRONT.
--
-- dramatiq's own maintenance (dispatch.lua) re-queues a dead worker's unacked messages at the
-- tail of their queue, so a run interrupted by a crash would wait behind the whole backlog and
-- recovery would have no bound under load. This does the same job on the same keys (the ack
-- set per worker and level, the heartbeats zset, the dead-letter TTL) but LPUSHes the ids, so a
-- crashed run is the next one taken. It also avoids dispatch.lua's KEYS scan.
--
-- KEYS[1] heartbeats zset
-- ARGV[1] queue namespace  ARGV[2] now ms  ARGV[3] heartbeat timeout ms  ARGV[4] dead-letter TTL ms
-- ARGV[5] this worker's id (marked alive)  ARGV[6] 1 to look for dead workers, 0 to only beat
-- ARGV[7..] levels
-- Returns the number of messages re-queued.

local ns = ARGV[1]
local now = tonumber(ARGV[2])
redis.call("zadd", KEYS[1], now, ARGV[5])
if ARGV[6] ~= "1" then
  return 0
end
local moved = 0
local dead = redis.call("zrangebyscore", KEYS[1], 0, now - tonumber(ARGV[3]), "LIMIT", 0, 50)
for _, worker in ipairs(dead) do
  for i = 7, #ARGV do
    local level = ARGV[i]
    local queue = ns .. ":" .. level
    local acks = ns .. ":__acks__." .. worker .. "." .. level
    local ids = redis.call("smembers", acks)
    for _, mid in ipairs(ids) do
      if redis.call("hexists", queue .. ".msgs", mid) == 1 then
        redis.call("lpush", queue, mid)
        moved = moved + 1
      end
    end
    redis.call("del", acks)
  end
  redis.call("zrem", KEYS[1], worker)
end
if moved > 0 then
  redis.call("lpush", ns .. ":wake", "1")
end
for i = 7, #ARGV do
  local xq = ns .. ":" .. ARGV[i] .. ".XQ"
  local expired = redis.call("zrangebyscore", xq, 0, now - tonumber(ARGV[4]), "LIMIT", 0, 100)
  for _, mid in ipairs(expired) do
    redis.call("zrem", xq, mid)
    redis.call("hdel", xq .. ".msgs", mid)
  end
end
return moved
