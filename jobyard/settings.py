"""Process-wide configuration, read once from ``JOBYARD_*`` environment variables."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

ENV_PREFIX = "JOBYARD_"

# Variables read outside the Settings object (by the CLI, the client or the run environment).
EXTRA_KNOWN_ENV = {
    "JOBYARD_URL",
    "JOBYARD_TOKEN",
    # Set by a worker for the runs it starts; seen by jobs, never configuration.
    "JOBYARD_JOB_NAME",
    "JOBYARD_JOB_TYPE",
    "JOBYARD_RUN_ID",
    "JOBYARD_ATTEMPT",
    "JOBYARD_DATA_PATH",
    "JOBYARD_SHUTDOWN_FILE",
    "JOBYARD_RESULT_FILE",
    "JOBYARD_PORT",
    "JOBYARD_OLD_SECRET_KEY",  # read by `jobyard secrets rotate`
}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jobyard"


def _default_instance_id() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


class Settings(BaseSettings):
    """Every knob of every role. Durations are seconds."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    # Redis
    redis_url: SecretStr = SecretStr("")
    redis_sentinels: str = ""  # host:port,host:port
    redis_master_name: str = "mymaster"
    redis_sentinel_password: SecretStr = SecretStr("")
    redis_prefix: str = "jobyard"
    redis_connect_timeout_seconds: float = 30.0
    # TLS and ACL users (jobyard/redis_conn.py): rediss:// URLs take the certificate settings;
    # Sentinel mode uses TLS to the master with redis_ssl (and to the sentinels with
    # redis_sentinel_ssl). A username or password in the URL wins over these.
    redis_username: str = ""
    redis_password: SecretStr = SecretStr("")
    redis_ssl: bool = False
    redis_ssl_ca_certs: str = ""
    redis_ssl_certfile: str = ""
    redis_ssl_keyfile: str = ""
    redis_ssl_cert_reqs: str = "required"  # required | optional | none
    redis_ssl_check_hostname: bool = True
    redis_sentinel_username: str = ""
    redis_sentinel_ssl: bool = False
    # Replication is asynchronous: a failover loses what the replicas had not copied yet. > 0:
    # an accepted run is answered only once this many replicas confirm it (WAIT), else 503
    # (jobyard/redis_conn.py: wait_for_replicas).
    redis_wait_replicas: int = 0
    redis_wait_timeout_seconds: float = 1.0

    # Identity and storage
    data_dir: Path = Field(default_factory=_default_data_dir)
    instance_id: str = Field(default_factory=_default_instance_id)

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    admin_token: SecretStr = SecretStr("")
    callback_secret: SecretStr = SecretStr("")
    auth_failures_per_minute: int = 100
    trusted_proxies: str = ""  # comma-separated addresses whose X-Forwarded-For is believed
    https_redirect: bool = False  # answer plain-http requests (but probes) with a redirect to https
    hsts_seconds: int = 0  # > 0: Strict-Transport-Security max-age on https answers
    audit_max_events: int = 100_000  # the audit stream is trimmed to about this many entries
    # Fernet key(s) or passphrase(s) for job secrets, newest first (jobyard/secrets.py).
    secret_key: SecretStr = SecretStr("")
    max_package_bytes: int = 100 * 1024 * 1024
    max_unpacked_bytes: int = 1024 * 1024 * 1024
    max_unpack_ratio: float = 200.0
    max_package_files: int = 10_000

    # Metrics and logs
    # Port of /metrics, /healthz and /readyz for workers and schedulers (the API serves them on its
    # own port). None: the role default (worker 9101, scheduler 9102); 0: disabled.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # deployments set 0.0.0.0 so Prometheus can reach it
    log_format: str = "text"
    log_level: str = "INFO"

    # Worker
    concurrency: int = Field(default_factory=lambda: os.cpu_count() or 2)
    heartbeat_interval_seconds: float = 1.0
    heartbeat_timeout_seconds: float = 15.0
    run_lease_ttl_seconds: float = 10.0
    idle_wait_seconds: float = 1.0
    max_output_mb: float = 10.0
    max_line_bytes: int = 64 * 1024
    max_result_bytes: int = 64 * 1024
    python: str = ""  # interpreter for .py jobs; default: the worker's own
    run_as: str = ""  # account scripts run as (the worker must be root); settings.job run_as wins
    # Limits of every run whose settings.job does not set them (workers/limits.py); unset: none.
    default_max_memory_mb: float | None = None
    default_max_cpu_seconds: float | None = None
    default_max_open_files: int | None = None
    default_max_processes: int | None = None
    cgroups: str = "auto"  # auto: use cgroup v2 or v1 where writable; off: rlimits only
    run_env_passthrough: str = "PATH,LANG,LC_ALL,TZ"
    max_worker_deaths: int = 3
    # Strict priority starves low runs under a steady high stream; > 0 lets a waiting run rise one
    # level per this many seconds waited. Off by default: strict means strict.
    priority_aging_seconds: float = 0.0
    default_stopping_wait_seconds: float = 5.0

    # Retention
    idempotency_ttl_seconds: float = 24 * 3600.0
    dead_letter_ttl_seconds: float = 7 * 24 * 3600.0
    default_history_size: int = 50

    # Scheduler
    leader_lease_ttl_seconds: float = 5.0
    leader_renew_interval_seconds: float = 1.0
    catch_up_window_seconds: float = 24 * 3600.0

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("JOBYARD_LOG_FORMAT must be 'text' or 'json'")
        return value

    @field_validator("cgroups")
    @classmethod
    def _cgroups(cls, value: str) -> str:
        if value not in ("auto", "off"):
            raise ValueError("JOBYARD_CGROUPS must be 'auto' or 'off'")
        return value

    @field_validator("redis_ssl_cert_reqs")
    @classmethod
    def _cert_reqs(cls, value: str) -> str:
        if value not in ("required", "optional", "none"):
            raise ValueError("JOBYARD_REDIS_SSL_CERT_REQS must be 'required', 'optional' or 'none'")
        return value

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """``JOBYARD_REDIS_SENTINELS`` as (host, port) pairs."""
        out: list[tuple[str, int]] = []
        for item in filter(None, (s.strip() for s in self.redis_sentinels.split(","))):
            host, _, port = item.rpartition(":")
            out.append((host or item, int(port or 26379)))
        return out


def unknown_env_names(environ: dict[str, str] | None = None) -> list[str]:
    """``JOBYARD_*`` variables that no setting reads: almost always a typo."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | EXTRA_KNOWN_ENV
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once; unknown ``JOBYARD_*`` names are logged."""
    settings = Settings()
    for name in unknown_env_names():
        log.warning("ignoring unknown environment variable %s (check its spelling)", name)
    return settings
