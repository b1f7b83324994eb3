-- push_message: put an already-encoded dramatiq message on a level's queue, now or at an eta.
-- dramatiq's Retries middleware re-enqueues through this (jobyard.queue.JobyardBroker.enqueue).
--
-- KEYS[1] queue list  KEYS[2] queue messages hash  KEYS[3] delayed zset  KEYS[4] wake list
-- ARGV[1] message id  ARGV[2] encoded message  ARGV[3] level  ARGV[4] eta ms (0 = now)

redis.call("hset", KEYS[2], ARGV[1], ARGV[2])
if tonumber(ARGV[4]) > 0 then
  redis.call("zadd", KEYS[3], ARGV[4], ARGV[3] .. "|" .. ARGV[1])
else
  redis.call("rpush", KEYS[1], ARGV[1])
  redis.call("lpush", KEYS[4], "1")
  redis.call("ltrim", KEYS[4], 0, 999)
end
return 1
