-- claim_run: claim a run for a message this worker already holds (see _claim.lua).
--
-- KEYS[1] run hash  KEYS[2] run lease  KEYS[3] job hash  KEYS[4] job slots zset
-- KEYS[5] job secrets hash
-- ARGV[1] worker process id  ARGV[2] instance id  ARGV[3] pid  ARGV[4] now (epoch s)
-- ARGV[5] lease ms  ARGV[6] max deaths  ARGV[7] terminal statuses, comma-separated

--! include _claim

return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7])
