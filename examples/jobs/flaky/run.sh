#!/usr/bin/env bash
# Fails until attempt N (first argument, default 2), then succeeds: shows retries
# (settings.job max_retries) and JOBYARD_ATTEMPT.
succeed_at="${1:-2}"
echo "flaky: attempt $JOBYARD_ATTEMPT, succeeds at attempt $succeed_at"
if [ "${JOBYARD_ATTEMPT:-1}" -lt "$succeed_at" ]; then
  echo "flaky: failing on purpose" >&2
  exit 3
fi
echo "flaky: ok"
