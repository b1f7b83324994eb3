"""Deploying, replacing, re-configuring and deleting jobs (synchronous: workers, tools, the API in a thread).

A deploy checks everything first (name, zip, ``settings.job``, a runnable entry), stores the
package, and then writes the job record, its package references and the event in one
WATCH/MULTI transaction: when a check fails nothing is written, and an existing job of that
name is untouched.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from jobyard.entry import Interpreters, choose_entry
from jobyard.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from jobyard.jobsettings import MAX_SETTINGS_BYTES, parse_settings
from jobyard.keys import Keys
from jobyard.models import JOB_NAME_RE, JOB_NAME_RULE, TERMINAL, Job, JobType
from jobyard.packages import PackageStore, extract_zip, plain_file_name, wrap_script
from jobyard.settings import Settings

SETTINGS_FILE = "settings.job"
# Optimistic transactions retry when a watched key changed; past this, something keeps changing it.
MAX_TX_ATTEMPTS = 50


@dataclass
class Inspected:
    """What a package holds, as far as deploying it is concerned."""

    files: list[str]
    settings: dict[str, Any]
    entry: str


def check_name(name: str) -> str:
    """``name`` if it is a valid job name; else ``InvalidInput`` stating the rule."""
    if not isinstance(name, str) or not JOB_NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid job name {name!r}: {JOB_NAME_RULE}", JOB_NAME_RULE)
    return name


def _check_type(value: str | None) -> JobType | None:
    if value is None:
        return None
    try:
        return JobType(value)
    except ValueError:
        raise InvalidInput(f"job type {value!r} is not valid", "use 'triggered' or 'continuous'") from None


_INTERPRETERS: dict[str, Interpreters] = {}


def _host_interpreters(settings: Settings) -> Interpreters:
    """This host's interpreters, looked up once per configured Python."""
    found = _INTERPRETERS.get(settings.python)
    if found is None:
        found = _INTERPRETERS[settings.python] = Interpreters.detect(settings)
    return found


def inspect_package(zip_path: Path, tree: Path, settings: Settings) -> Inspected:
    """Extract a package into ``tree`` (all caps enforced), read its settings.job, pick its entry."""
    files = extract_zip(zip_path, tree, settings)
    job_settings: dict[str, Any] = {}
    if SETTINGS_FILE in files:
        with open(tree / SETTINGS_FILE, "rb") as f:
            job_settings = parse_settings(f.read(MAX_SETTINGS_BYTES + 1))
    entry = choose_entry(tree, files, job_settings.get("entry"), None)
    with contextlib.suppress(InvalidInput):
        # What a host like this one would run (run.sh over run.cmd on Linux); workers decide again.
        entry = choose_entry(tree, files, job_settings.get("entry"), _host_interpreters(settings))
    return Inspected(files, job_settings, entry)


def _is_script(filename: str) -> bool:
    return bool(filename) and not filename.lower().endswith(".zip")


def deploy_job(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    name: str,
    package_path: Path,
    filename: str,
    type_override: str | None = None,
) -> tuple[Job, bool]:
    """Deploy or replace job ``name``; the job record and True when it is new.

    ``filename`` is the uploaded file's name: ``""`` or ``*.zip`` means ``package_path`` is a zip;
    any other name means it is a single script, wrapped here into a one-file zip of that name.
    """
    check_name(name)
    forced_type = _check_type(type_override)
    if _is_script(filename):
        plain_file_name(filename)
    size = package_path.stat().st_size
    if size > settings.max_package_bytes:
        raise PayloadTooLarge(
            f"the package is {size} bytes, more than {settings.max_package_bytes}",
            "packages are capped by JOBYARD_MAX_PACKAGE_BYTES; keep large data out of the package",
        )
    with tempfile.TemporaryDirectory(prefix=".jobyard-deploy-", dir=package_path.parent) as tmp:
        zip_path = package_path
        if _is_script(filename):
            zip_path = Path(tmp) / "package.zip"
            wrap_script(package_path, filename, zip_path)
        found = inspect_package(zip_path, Path(tmp) / "tree", settings)
        job_type = forced_type or JobType(found.settings.get("type", JobType.TRIGGERED.value))
        store = PackageStore(client, keys)
        sha = store.put(zip_path)
        template = Job(
            name=name,
            type=job_type,
            package=sha,
            entry=found.entry,
            settings=found.settings,
            filename=filename,
            size=zip_path.stat().st_size,
        )
        return _commit_deploy(client, keys, store, template, zip_path)


def _commit_deploy(
    client: redis.Redis, keys: Keys, store: PackageStore, job: Job, zip_path: Path
) -> tuple[Job, bool]:
    kjob = keys.job(job.name)
    for _ in range(MAX_TX_ATTEMPTS):
        with _transaction(client) as pipe:
            try:
                pipe.watch(kjob)
                raw = pipe.hgetall(kjob)
                old = Job.from_hash(raw) if raw else None
                old_sha = old.package if old else None
                pipe.watch(*store.watch_keys(job.package, old_sha))
                if not pipe.exists(keys.package(job.package)):
                    # Its last other user was deleted since put(): store it again.
                    pipe.unwatch()
                    store.put(zip_path)
                    continue
                old_refs = set(pipe.smembers(keys.package_refs(old_sha))) if old_sha else None
                now = time.time()
                job.created_at = old.created_at if old else now
                job.updated_at = now
                job.version = old.version + 1 if old else 1
                job.stopped = old.stopped if old else 0
                job.paused = old.paused if old else 0
                pipe.multi()
                pipe.hset(kjob, mapping=job.to_hash())
                pipe.sadd(keys.jobs, job.name)
                store.queue_swap(pipe, job.name, old_sha, job.package, old_refs)
                pipe.publish(keys.events, _event("deployed", job))
                pipe.execute()
                return job, old is None
            except redis.WatchError:
                continue
    raise Conflict(f"job {job.name!r} kept changing while being deployed", "retry the deploy")


def _transaction(client: redis.Redis) -> Any:
    """A WATCH/MULTI pipeline (typed loosely: redis-py's stubs do not cover its watch mode)."""
    return client.pipeline(transaction=True)


def _event(kind: str, job: Job) -> str:
    return json.dumps({"event": kind, "job": job.name, "version": job.version})


def get_job(client: redis.Redis, keys: Keys, name: str) -> Job:
    """The job record, or ``NotFound``."""
    raw = client.hgetall(keys.job(name))
    if not raw:
        raise NotFound(f"job {name!r} does not exist", f"deploy it first with PUT /api/jobs/{name}")
    return Job.from_hash(raw)  # type: ignore[arg-type]


def list_jobs(client: redis.Redis, keys: Keys) -> list[Job]:
    """Every job, by name."""
    names = sorted(n.decode() for n in client.smembers(keys.jobs))  # type: ignore[union-attr]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.job(name))
    return [Job.from_hash(raw) for raw in pipe.execute() if raw]


def _entry_from_store(
    client: redis.Redis, keys: Keys, settings: Settings, job: Job, entry: str | None
) -> str:
    """Choose the entry of a stored package again (its settings' ``entry`` changed)."""
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".jobyard-settings-", dir=scratch) as tmp:
        zip_path = Path(tmp) / "package.zip"
        PackageStore(client, keys).fetch_to(job.package, zip_path)
        tree = Path(tmp) / "tree"
        files = extract_zip(zip_path, tree, settings)
        chosen = choose_entry(tree, files, entry, None)
        with contextlib.suppress(InvalidInput):
            chosen = choose_entry(tree, files, entry, _host_interpreters(settings))
        return chosen


def update_settings(
    client: redis.Redis, keys: Keys, settings: Settings, name: str, raw: bytes | str | dict[str, Any]
) -> Job:
    """Replace a job's settings.job (validated; the type may change); the updated record."""
    new = parse_settings(raw)
    kjob = keys.job(name)
    for _ in range(MAX_TX_ATTEMPTS):
        job = get_job(client, keys, name)
        entry = job.entry
        if new.get("entry") != job.settings.get("entry"):
            entry = _entry_from_store(client, keys, settings, job, new.get("entry"))
        with _transaction(client) as pipe:
            try:
                pipe.watch(kjob)
                current = pipe.hgetall(kjob)
                if not current:
                    raise NotFound(
                        f"job {name!r} does not exist", f"deploy it first with PUT /api/jobs/{name}"
                    )
                now_job = Job.from_hash(current)
                if now_job.package != job.package or now_job.version != job.version:
                    continue  # replaced meanwhile: decide the entry again on the new record
                job.settings = new
                job.entry = entry
                job.type = JobType(new.get("type", job.type.value))
                job.updated_at = time.time()
                job.version += 1
                pipe.multi()
                pipe.hset(kjob, mapping=job.to_hash())
                pipe.publish(keys.events, _event("settings", job))
                pipe.execute()
                return job
            except redis.WatchError:
                continue
    raise Conflict(f"job {name!r} kept changing while its settings were saved", "retry")


def delete_job(client: redis.Redis, keys: Keys, name: str) -> None:
    """Remove a job: its record, history, finished runs and their logs, and its package reference.

    Runs still queued or running keep their records, so they can end and be read; their ids leave
    the job's history with it.
    """
    store = PackageStore(client, keys)
    kjob, kruns = keys.job(name), keys.job_runs(name)
    for attempt in range(MAX_TX_ATTEMPTS):
        with _transaction(client) as pipe:
            try:
                pipe.watch(kjob, kruns)
                raw = pipe.hgetall(kjob)
                if not raw:
                    raise NotFound(f"job {name!r} does not exist", "nothing to delete")
                job = Job.from_hash(raw)
                ids = [i.decode() for i in pipe.zrange(kruns, 0, -1)]
                terminal, active = _split_by_status(client, keys, ids)
                if active and attempt < MAX_TX_ATTEMPTS - 1:
                    # A run that ends meanwhile restarts the transaction and is removed too.
                    pipe.watch(*(keys.run(i) for i in active))
                pipe.watch(*store.watch_keys(job.package))
                refs = set(pipe.smembers(keys.package_refs(job.package)))
                pipe.multi()
                pipe.delete(
                    kjob,
                    kruns,
                    keys.job_done(name),
                    keys.job_instances(name),
                    keys.job_last_fire(name),
                    keys.job_fire_stats(name),
                    keys.job_secrets(name),
                )
                pipe.srem(keys.jobs, name)
                for run_id in terminal:
                    pipe.delete(keys.run(run_id), keys.run_log(run_id), keys.run_lease(run_id))
                if terminal:
                    pipe.zrem(keys.dead_letters, *terminal)
                store.queue_swap(pipe, name, job.package, None, refs)
                pipe.publish(keys.events, _event("deleted", job))
                pipe.execute()
                return
            except redis.WatchError:
                continue
    raise Conflict(f"job {name!r} kept changing while being deleted", "retry the delete")


def _split_by_status(client: redis.Redis, keys: Keys, ids: list[str]) -> tuple[list[str], list[str]]:
    """Run ids split into (terminal or gone, still active)."""
    pipe = client.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(keys.run(run_id), "status")
    terminal: list[str] = []
    active: list[str] = []
    values = {s.value for s in TERMINAL}
    for run_id, status in zip(ids, pipe.execute(), strict=True):
        if status is None or status.decode() in values:
            terminal.append(run_id)
        else:
            active.append(run_id)
    return terminal, active
