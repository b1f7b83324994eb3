"""Cluster tests: Redis high availability under Sentinel, and roles on separate network hosts."""
