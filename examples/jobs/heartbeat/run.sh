#!/usr/bin/env bash
# A continuous job: kept running by a worker, restarted when it exits. It beats once a second
# and ends cleanly (exit 0) as soon as the shutdown file appears or SIGTERM arrives.
# Argument: the beat interval in seconds (default 1).
interval="${1:-1}"
stop=0
trap 'stop=1' TERM INT
n=0
while [ "$stop" -eq 0 ] && [ ! -e "${JOBYARD_SHUTDOWN_FILE:-/nonexistent}" ]; do
  n=$((n + 1))
  echo "beat $n"
  sleep "$interval" &
  wait $! 2>/dev/null
done
echo "heartbeat: asked to stop after $n beats, exiting cleanly"
exit 0
