"""Run callbacks: the signature other services check, and how a callback URL is judged."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from jobyard.errors import InvalidInput

SIGNATURE_HEADER = "X-Jobyard-Signature"


def signature(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body under secret>``, the value of ``X-Jobyard-Signature``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time comparison)."""
    return hmac.compare_digest(signature(body, secret), header)


def body_of(run_api: dict[str, Any]) -> bytes:
    """The callback body: the run as the API shows it, as compact sorted JSON."""
    return json.dumps(run_api, sort_keys=True, separators=(",", ":")).encode()


def check_callback_url(url: str) -> str:
    """An http(s) URL with a host, else ``InvalidInput``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"callback_url {url!r} is not an http or https URL",
            "give an absolute URL such as https://example.com/hooks/jobyard",
        )
    return url
