"""Per-job secrets: environment values kept encrypted in Redis under ``JOBYARD_SECRET_KEY``.

Admins set them through ``PUT /api/jobs/{name}/secrets/{KEY}``; the API stores and lists names,
never values; the worker decrypts them into the run's environment (and masks them in its log).

Storage: ``keys.job_secrets(job)`` is a hash ``KEY -> JSON {"token", "updated_at", "by"}`` where
``token`` is a Fernet token (AES-128-CBC with HMAC-SHA256, from ``cryptography``) of
``{"j": job, "k": KEY, "v": value}``: a dump of Redis shows neither the value nor anything that
opens it, and a token copied to another job or name fails to open there.

``JOBYARD_SECRET_KEY`` is one key or several separated by commas, newest first: values are
written under the first and read under any (``MultiFernet``). Each is a Fernet key (44 URL-safe
base64 characters, ``jobyard secrets keygen``) or a passphrase of 16+ characters, stretched
with scrypt. Rotation: put the new key first, keep the old one after it, run
``jobyard secrets rotate`` (re-encrypts every value under the new key), then drop the old one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from jobyard.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from jobyard.keys import Keys
from jobyard.models import iso
from jobyard.settings import Settings

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_PREFIXES = ("JOBYARD_", "WEBJOBS_")
RESERVED_NAMES = {"WEBSITE_INSTANCE_ID", "HOME", "TMPDIR"}  # the worker sets these for every run
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS_PER_JOB = 100
MIN_PASSPHRASE_CHARS = 16
# A fixed salt: the passphrase must open the same values on every host. Brute force is what
# scrypt's cost is for; a Fernet key (jobyard secrets keygen) needs no stretching at all.
_SALT = b"jobyard-secrets-v1"
_NO_KEY_HINT = "set JOBYARD_SECRET_KEY (jobyard secrets keygen prints one) on the API and every worker"


def check_name(name: str) -> str:
    """``name`` if it can be a secret's environment variable name, else ``InvalidInput``."""
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"{name[:130]!r} is not a variable name",
            "letters, digits and '_', no digit first, at most 128 characters",
        )
    if name.upper().startswith(RESERVED_PREFIXES) or name.upper() in RESERVED_NAMES:
        raise InvalidInput(f"{name!r} is reserved for the variables jobyard sets", "choose another name")
    return name


def check_value(value: str) -> str:
    """``value`` if it can go into a process environment, else an error naming the problem."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput("the value is not valid text", str(exc)) from exc
    if size > MAX_VALUE_BYTES:
        raise PayloadTooLarge(f"the value is {size} bytes", f"secrets are at most {MAX_VALUE_BYTES} bytes")
    if "\x00" in value:
        raise InvalidInput("the value contains a NUL character", "environment values cannot hold NUL")
    return value


@lru_cache(maxsize=16)
def fernet_key(text: str) -> bytes:
    """A Fernet key from ``text``: itself if it is one, else scrypt of a long enough passphrase."""
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text.encode())
        if len(raw) == 32 and len(text) == 44:
            return text.encode()
    except (binascii.Error, ValueError):
        pass
    if len(text) < MIN_PASSPHRASE_CHARS:
        raise InvalidInput(
            f"a JOBYARD_SECRET_KEY entry is {len(text)} characters",
            f"use a Fernet key (jobyard secrets keygen) or a passphrase of {MIN_PASSPHRASE_CHARS}+ chars",
        )
    derived = Scrypt(salt=_SALT, length=32, n=2**14, r=8, p=1).derive(text.encode())
    return base64.urlsafe_b64encode(derived)


def new_key() -> str:
    """A fresh random Fernet key."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts under the first key, decrypts under any of them."""

    def __init__(self, keys: list[str]) -> None:
        entries = [k for k in (s.strip() for s in keys) if k]
        if not entries:
            raise InvalidInput("no secret key is configured", _NO_KEY_HINT)
        self._fernet = MultiFernet([Fernet(fernet_key(k)) for k in entries])

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        """From a ``JOBYARD_SECRET_KEY`` value (comma-separated, newest first)."""
        return cls(text.split(","))

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox | None:
        """The cluster's box, or None when ``JOBYARD_SECRET_KEY`` is not set."""
        text = settings.secret_key.get_secret_value()
        return cls.from_text(text) if text.strip() else None

    def seal(self, job: str, name: str, value: str) -> str:
        """The stored token of one value."""
        payload = json.dumps({"j": job, "k": name, "v": value}, separators=(",", ":")).encode()
        return self._fernet.encrypt(payload).decode()

    def open(self, job: str, name: str, token: str) -> str:
        """The value of a stored token (``InvalidInput`` when no key opens it or it is misplaced)."""
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError) as exc:
            raise InvalidInput(
                f"secret {name!r} of job {job!r} cannot be decrypted with JOBYARD_SECRET_KEY",
                "the key was changed without 'jobyard secrets rotate': add the old key after the new one",
            ) from exc
        if data.get("j") != job or data.get("k") != name:
            raise InvalidInput(
                f"secret {name!r} of job {job!r} was sealed for another job or name",
                "set it again with PUT /api/jobs/{name}/secrets/{KEY}",
            )
        return str(data["v"])

    def rotate(self, token: str) -> str:
        """The token re-encrypted under the first key."""
        return self._fernet.rotate(token.encode()).decode()


def require_box(settings: Settings) -> SecretBox:
    """The cluster's box; ``Conflict`` saying what to set when there is none."""
    box = SecretBox.from_settings(settings)
    if box is None:
        raise Conflict("secrets are not enabled on this cluster: JOBYARD_SECRET_KEY is not set", _NO_KEY_HINT)
    return box


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: its name and when it was set, never its value."""

    name: str
    updated_at: float | None
    updated_by: str | None

    def as_api(self) -> dict[str, Any]:
        """The listing form."""
        return {"name": self.name, "updated_at": iso(self.updated_at), "updated_by": self.updated_by}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(box: SecretBox, job: str, name: str, value: str, by: str) -> str:
    return json.dumps({"token": box.seal(job, name, value), "updated_at": time.time(), "by": by})


def _infos(raw: dict[Any, Any]) -> list[SecretInfo]:
    out = []
    for key, value in raw.items():
        name = _text(key)
        try:
            data = json.loads(value)
        except ValueError:
            data = {}
        out.append(SecretInfo(name, data.get("updated_at"), data.get("by")))
    return sorted(out, key=lambda s: s.name)


def _not_found(job: str, name: str) -> NotFound:
    return NotFound(f"job {job!r} has no secret {name!r}", f"GET /api/jobs/{job}/secrets lists its names")


def _too_many(job: str) -> Conflict:
    return Conflict(f"job {job!r} has {MAX_SECRETS_PER_JOB} secrets", "delete one before adding another")


# -- synchronous (worker, CLI) -------------------------------------------------------------------
def set_secret(
    client: redis.Redis, keys: Keys, box: SecretBox, job: str, name: str, value: str, by: str = ""
) -> bool:
    """Store one value; True when the name is new."""
    key = keys.job_secrets(job)
    entry = _entry(box, job, check_name(name), check_value(value), by)
    if not client.hexists(key, name) and client.hlen(key) >= MAX_SECRETS_PER_JOB:
        raise _too_many(job)
    return bool(client.hset(key, name, entry))


def list_secrets(client: redis.Redis, keys: Keys, job: str) -> list[SecretInfo]:
    """A job's secret names, sorted."""
    return _infos(client.hgetall(keys.job_secrets(job)))


def delete_secret(client: redis.Redis, keys: Keys, job: str, name: str) -> None:
    """Remove one value; ``NotFound`` when there is none."""
    if not client.hdel(keys.job_secrets(job), name):
        raise _not_found(job, name)


def load_for_run(
    client: redis.Redis, keys: Keys, settings: Settings, job: str, raw: dict[bytes, bytes] | None = None
) -> dict[str, str]:
    """Every secret of ``job``, decrypted, for a run's environment (empty when it has none).

    ``raw`` is the job's secrets hash when the caller already read it (the worker's claim does).
    """
    if raw is None:
        raw = cast(dict[bytes, bytes], client.hgetall(keys.job_secrets(job)))
    if not raw:
        return {}
    box = SecretBox.from_settings(settings)
    if box is None:
        raise InvalidInput(f"job {job!r} has secrets but this worker has no JOBYARD_SECRET_KEY", _NO_KEY_HINT)
    out = {}
    for key, value in raw.items():
        name = _text(key)
        out[name] = box.open(job, name, json.loads(value)["token"])
    return out


def rotate_all(client: redis.Redis, keys: Keys, box: SecretBox) -> int:
    """Re-encrypt every stored value under the box's first key; the number re-encrypted."""
    count = 0
    for key in client.scan_iter(match=keys.job_secrets("*"), count=500):
        job = _text(key)[len(keys.job_secrets("")) :]
        for field, value in client.hgetall(key).items():
            data = json.loads(value)
            name = _text(field)
            box.open(job, name, data["token"])  # refuse to rotate what does not belong here
            data["token"] = box.rotate(data["token"])
            # Only if unchanged meanwhile: a value set during the rotation is already current.
            if client.eval(_REPLACE_IF_SAME, 1, key, field, value, json.dumps(data)):
                count += 1
    return count


_REPLACE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]); return 1
end
return 0
"""


# -- asyncio (API) -------------------------------------------------------------------------------
async def aset_secret(
    client: aioredis.Redis, keys: Keys, box: SecretBox, job: str, name: str, value: str, by: str = ""
) -> bool:
    """Asyncio ``set_secret``."""
    key = keys.job_secrets(job)
    entry = _entry(box, job, check_name(name), check_value(value), by)
    if not await client.hexists(key, name) and await client.hlen(key) >= MAX_SECRETS_PER_JOB:
        raise _too_many(job)
    return bool(await client.hset(key, name, entry))


async def alist_secrets(client: aioredis.Redis, keys: Keys, job: str) -> list[SecretInfo]:
    """Asyncio ``list_secrets``."""
    return _infos(await client.hgetall(keys.job_secrets(job)))


async def adelete_secret(client: aioredis.Redis, keys: Keys, job: str, name: str) -> None:
    """Asyncio ``delete_secret``."""
    if not await client.hdel(keys.job_secrets(job), name):
        raise _not_found(job, name)
