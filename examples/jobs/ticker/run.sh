#!/usr/bin/env bash
# Fired by the scheduler every 30 seconds (settings.job); prints the nominal fire time.
echo "tick at $(date -u +%Y-%m-%dT%H:%M:%SZ), run $JOBYARD_RUN_ID"
