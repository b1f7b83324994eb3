"""The scheduler role: leader election and firing every scheduled run exactly once.

Run any number of replicas (``jobyard scheduler``); one holds the leader lease at a time
(``scheduler/election.py`` on ``jobyard/lease.py``) and fires (``scheduler/service.py``).

APScheduler 3.11.x (pinned ``>=3.11.2,<4``: 3.11.1/3.11.2 fixed CronTrigger DST bugs, and 4.0 is
an alpha) is used for fire-time arithmetic only (``CronTrigger`` fields, through
``jobyard/cron.py``), with our own loop, not its ``BackgroundScheduler``:

- exactly once needs each fire's *nominal* time in the ``P:fire:<job>:<ts>`` key and the run's
  ``scheduled_for``; APScheduler does not tell a job function its scheduled time;
- its misfire rules (``misfire_grace_time``, ``coalesce``) are per process and know nothing of
  the time when no leader lived: our ``catch_up`` looks back from the last fire recorded in Redis;
- a lost lease must stop firing between two fires, and a ``fenced`` answer at once; with a
  scheduler thread of its own that needs shutting it down and rebuilding it on every term;
- its ``CronTrigger`` skips or doubles fire times across DST changes (see ``jobyard/cron.py``),
  so the wall-clock-to-instant step is ours anyway.

One-off future runs (``run_at``/``delay_s``) are not the scheduler's: the queue layer keeps them
in the delayed zset and a worker promotes them, so they survive any leader change and are never
fired here.
"""
