#!/usr/bin/env bash
# Sleeps for SECONDS (first argument, default 10), printing a line each second. On SIGTERM it
# says so and exits 143 right away, unless --ignore-term is given: then it keeps sleeping and
# has to be killed (what stopping_wait_time and timeouts are for).
seconds="${1:-10}"
ignore=0
for arg in "$@"; do
  [ "$arg" = "--ignore-term" ] && ignore=1
done
if [ "$ignore" -eq 1 ]; then
  trap 'echo "slow: SIGTERM ignored"' TERM
else
  trap 'echo "slow: SIGTERM received, stopping"; exit 143' TERM
fi
echo "slow: sleeping $seconds s (pid $$)"
i=0
while [ "$i" -lt "$seconds" ]; do
  sleep 1 &
  wait $! 2>/dev/null
  i=$((i + 1))
  echo "slow: $i/$seconds"
done
echo "slow: done"
