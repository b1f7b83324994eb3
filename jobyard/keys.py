"""Every Redis key jobyard uses, in one place.

``P`` is the configured prefix (``JOBYARD_REDIS_PREFIX``, default ``jobyard``).

Queue layer (dramatiq's Redis broker layout, namespace ``P:q``; see ``jobyard/queue.py``):

- ``P:q:<level>``              list of waiting message ids, one per priority level (high, normal, low)
- ``P:q:<level>.msgs``         hash message id -> encoded dramatiq message
- ``P:q:<level>.XQ(.msgs)``    dramatiq's dead-letter zset/hash (purged after the dead-letter TTL)
- ``P:q:__acks__.<broker>.<level>``  set of fetched, unacked ids per worker process
- ``P:q:__heartbeats__``       zset worker process (broker id) -> last heartbeat ms
- ``P:q:delayed``              zset "<level>|<message id>" -> eta ms (retries, run_at, delay_s)
- ``P:q:wake``                 list of wake-up tokens; idle consumers BLPOP it

Jobs and packages:

- ``P:jobs``                   set of job names
- ``P:job:<name>``             hash: the job record (see ``jobyard/models.py``)
- ``P:pkg:<sha256>``           string: the package zip, content-addressed
- ``P:pkg:<sha256>:refs``      set of job names using that package
- ``P:pkg:<sha256>:upload:<t>``  string: a package being written (TTL), then renamed to ``P:pkg:<sha256>``

Runs:

- ``P:run:<id>``               hash: the run record
- ``P:run:<id>:log``           stream: one entry per output line (t, s, m)
- ``P:run:<id>:lease``         string: worker process id, PX lease while the run executes
- ``P:job:<name>:runs``        zset run id -> enqueue ms: the job's history
- ``P:job:<name>:active``      set of run ids queued or running (overlap checks, concurrency)
- ``P:job:<name>:done``        zset run id -> end ms: finished runs, trimmed to ``history_size``
- ``P:idem:<job>:<key>``       string: run id for an idempotency key (TTL)
- ``P:job:<name>:slots``       zset run id -> lease expiry ms: runs holding one of the job's
                               ``max_concurrency`` slots (cluster-wide)
- ``P:job:<name>:parked``      list "<level>|<message id>": runs fetched while the job was at its
                               limit, put back at the front of their level when a slot frees
- ``P:parked``                 set of job names with parked runs (for maintenance)
- ``P:deadletters``            zset run id -> dead-letter time ms
- ``P:cancel``                 pub/sub channel: run ids asked to stop
- ``P:callbacks``              zset run id -> when its callback is due (ms): the outbox of run
                               callbacks; a sender pushes the score forward while it delivers

Cluster:

- ``P:workers``                zset worker process id -> last seen ms
- ``P:worker:<id>``            hash: instance_id, host, pid, slots, busy, started_at
- ``P:tokens``                 hash sha256(token) -> token record JSON
- ``P:audit``                  stream, capped: one entry per admin action (who, what, when, outcome;
                               ``jobyard/audit.py``)
- ``P:secrets:<name>``         hash KEY -> JSON with the Fernet token of a job's secret value
                               (``jobyard/secrets.py``; names only ever leave it, never values)
- ``P:leader``                 string: scheduler leader lease, value "<instance>:<pid>" (jobyard/lease.py)
- ``P:leader:term``            counter: fencing token, raised on every new term
- ``P:leader:info``            hash: instance, holder, term, since
- ``P:fire:<job>:<fire ts>``   string: exactly-once record of one scheduled fire
- ``P:job:<name>:last_fire``   string: epoch seconds of the newest scheduled fire time the leader handled
                               (fired, skipped or found already fired): where a new leader's catch-up starts
- ``P:job:<name>:fire_stats``  hash: scheduler counters per job (fired, duplicate, skipped_overlap,
                               skipped_missed, fenced)
- ``P:events``                 pub/sub channel: job deployed / changed / deleted
- ``P:replication``            pub/sub channel nobody listens to: the replicated no-op published
                               before ``WAIT`` (``JOBYARD_REDIS_WAIT_REPLICAS``, jobyard/redis_conn.py)

Continuous jobs:

- ``P:job:<name>:instances``   hash instance id -> JSON (host, status, pid, run_id, started_at,
                               restarts, next_start_at): what ``GET /api/jobs/<name>`` shows
- ``P:cont:<name>:<instance>`` string: per-host lease (one instance per host however many worker
                               processes it runs); ``<instance>`` is ``singleton`` for the
                               cluster-wide lease of an ``is_singleton`` job

Dashboard:

- ``P:dashboard:secret``       string: the key that signs dashboard session cookies (random, set once
                               with NX, shared by every API replica)
- ``P:dashboard:session:<id>`` hash: one dashboard login (token id, token hash, role, flash
                               messages); expires when idle, deleted at logout
"""

from __future__ import annotations

from dataclasses import dataclass

PRIORITY_LEVELS = ("high", "normal", "low")


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "jobyard"

    # queue layer
    @property
    def queue_namespace(self) -> str:
        return f"{self.prefix}:q"

    def queue(self, level: str) -> str:
        return f"{self.prefix}:q:{level}"

    def queue_msgs(self, level: str) -> str:
        return f"{self.prefix}:q:{level}.msgs"

    def queue_xq(self, level: str) -> str:
        return f"{self.prefix}:q:{level}.XQ"

    def acks(self, broker_id: str, level: str) -> str:
        return f"{self.prefix}:q:__acks__.{broker_id}.{level}"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}:q:__heartbeats__"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:q:delayed"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:q:wake"

    # jobs and packages
    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def job(self, name: str) -> str:
        return f"{self.prefix}:job:{name}"

    def package(self, sha256: str) -> str:
        return f"{self.prefix}:pkg:{sha256}"

    def package_refs(self, sha256: str) -> str:
        return f"{self.prefix}:pkg:{sha256}:refs"

    def package_upload(self, sha256: str, token: str) -> str:
        return f"{self.prefix}:pkg:{sha256}:upload:{token}"

    # runs
    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def run_log(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:log"

    def run_lease(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:lease"

    def job_runs(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:runs"

    def job_active(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:active"

    def job_done(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:done"

    def job_slots(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:slots"

    def job_parked(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:parked"

    @property
    def parked(self) -> str:
        return f"{self.prefix}:parked"

    def job_instances(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:instances"

    def continuous_lease(self, name: str, instance: str) -> str:
        return f"{self.prefix}:cont:{name}:{instance}"

    def idempotency(self, job: str, key: str) -> str:
        return f"{self.prefix}:idem:{job}:{key}"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:deadletters"

    @property
    def callbacks(self) -> str:
        return f"{self.prefix}:callbacks"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    # cluster
    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def tokens(self) -> str:
        return f"{self.prefix}:tokens"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def job_secrets(self, name: str) -> str:
        return f"{self.prefix}:secrets:{name}"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"

    @property
    def leader_term(self) -> str:
        return f"{self.prefix}:leader:term"

    @property
    def leader_info(self) -> str:
        return f"{self.prefix}:leader:info"

    def job_last_fire(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:last_fire"

    def job_fire_stats(self, name: str) -> str:
        return f"{self.prefix}:job:{name}:fire_stats"

    def fire(self, job: str, fire_ts: float) -> str:
        return f"{self.prefix}:fire:{job}:{fire_ts:.3f}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def replication(self) -> str:
        return f"{self.prefix}:replication"

    # dashboard
    @property
    def dashboard_secret(self) -> str:
        return f"{self.prefix}:dashboard:secret"

    def dashboard_session(self, session_id: str) -> str:
        return f"{self.prefix}:dashboard:session:{session_id}"
