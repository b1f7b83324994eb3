"""``make bench``: jobyard's throughput, latency and recovery next to same-run baselines (not a test)."""
