#!/usr/bin/env bash
# Prints its arguments one per line, one line on stderr, and exits with the code given as
# --exit=N (default 0): the smallest job that shows arguments, both log streams and failure.
set -u
code=0
i=0
for arg in "$@"; do
  i=$((i + 1))
  case "$arg" in
    --exit=*) code="${arg#--exit=}" ;;
  esac
  echo "arg $i: $arg"
done
echo "hello from ${JOBYARD_JOB_NAME:-?}, run ${JOBYARD_RUN_ID:-?}, attempt ${JOBYARD_ATTEMPT:-?} ($# args)"
echo "this line goes to stderr" >&2
exit "$code"
