"""The error hierarchy. Every API error maps to one HTTP status in ``services/errors.py``."""

from __future__ import annotations


class JobyardError(Exception):
    """Root of every error jobyard raises on purpose.

    ``detail`` carries what was wrong and what to do about it; it is shown to clients.
    """

    code = "error"

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(JobyardError, LookupError):
    """A job, run, token or dead letter that does not exist."""

    code = "not_found"


class Conflict(JobyardError):
    """The request is valid but clashes with the current state (e.g. cancel a finished run)."""

    code = "conflict"


class InvalidInput(JobyardError, ValueError):
    """Input that breaks a rule: a bad name, bad settings.job, a bad package."""

    code = "invalid"


class PayloadTooLarge(InvalidInput):
    """An upload or a value over its size cap."""

    code = "too_large"


class Unauthorized(JobyardError):
    """No valid token."""

    code = "unauthorized"


class Forbidden(JobyardError):
    """A valid token whose role may not do this."""

    code = "forbidden"


class Unavailable(JobyardError):
    """A dependency (Redis) cannot be reached right now."""

    code = "unavailable"


class RateLimited(JobyardError):
    """Too many failed attempts from one client."""

    code = "rate_limited"
