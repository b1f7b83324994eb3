#!/usr/bin/env bash
# A single-file job (no folder, no settings.job) that always fails: exit 3 with a reason on stderr.
echo "fail: starting"
echo "fail: something went wrong on purpose" >&2
exit 3
