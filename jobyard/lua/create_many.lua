-- create_many: create_run for many runs in one call (the batch enqueue route).
--
-- Each run is written exactly as create_run.lua writes it, by the same code, in order (a later
-- run of the call sees an earlier one's idempotency key). One call for many runs saves Redis and
-- the caller the work of a command per run; a call is kept to some hundred runs, so it does not
-- hold Redis up for long.
--
-- KEYS: 11 per run, in run order: create_run.lua's KEYS[1..11] for each
-- ARGV: per run, in the same order: n, then create_run.lua's ARGV for the run (n values)
--
-- Returns one create_run.lua reply per run, in order.

--! include _create_run

local replies = {}
local a = 0
for k = 0, #KEYS - 11, 11 do
  local n = tonumber(ARGV[a + 1])
  replies[#replies + 1] = create(KEYS, k, ARGV, a + 1, a + 1 + n)
  a = a + 1 + n
end
return replies
