"""A small client for the jobyard HTTP API: what the CLI is built on and what other services import.

    from jobyard.client import Client

    jobs = Client()                      # JOBYARD_URL / JOBYARD_TOKEN
    jobs.deploy("./resize")              # a folder, a .zip or one script
    run = jobs.run("resize", ["a.png"])  # queued; returns the run record
    print(jobs.wait(run["id"])["status"])

Every failed request raises :class:`ApiError` with the server's ``error`` and ``detail``.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, connect_sse

from jobyard import __version__
from jobyard.errors import JobyardError
from jobyard.models import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8080"
_CHUNK = 256 * 1024
# Never packed from a folder: version-control and bytecode caches are not part of a job.
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__"}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed time stamps: the same folder gives the same package hash


class ApiError(JobyardError):
    """A request the server refused (or could not be sent): ``status`` 0 means no answer at all."""

    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error, detail)
        self.status = status
        self.error = error

    def __str__(self) -> str:
        return self.error if self.detail in (None, "") else f"{self.error} ({_detail_text(self.detail)})"


def _detail_text(detail: object) -> str:
    if isinstance(detail, str):
        return detail
    import json

    return json.dumps(detail, separators=(",", ":"))


def pack_folder(folder: Path, out: IO[bytes]) -> None:
    """Zip ``folder`` into ``out``: sorted, fixed time stamps, exec bits kept, symlinks never followed."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            base = Path(dirpath)
            rel_dir = base.relative_to(folder)
            # A symlinked directory is listed in dirnames; os.walk does not enter it, but drop it
            # explicitly so that what is skipped does not depend on that default.
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not (base / d).is_symlink())
            for name in sorted(filenames):
                path = base / name
                # Symlinks could point anywhere on this machine: never pack what they point at.
                if path.is_symlink() or not path.is_file() or name.endswith(".pyc"):
                    continue
                info = zipfile.ZipInfo((rel_dir / name).as_posix(), date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
                with path.open("rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)


def _iter_file(f: IO[bytes]) -> Iterator[bytes]:
    f.seek(0)
    while chunk := f.read(_CHUNK):
        yield chunk


def _quoted(value: str) -> str:
    return quote(value, safe="")


class Client:
    """The jobyard HTTP API as Python calls. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("JOBYARD_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("JOBYARD_TOKEN", "")
        headers = {"User-Agent": f"jobyard-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.last_status: str | None = None  # the status the last follow() stream ended with
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(0, f"no answer from {self.url} in time", str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise ApiError(
                0, f"cannot reach jobyard at {self.url}", f"{exc}; is it running? (JOBYARD_URL)"
            ) from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> ApiError:
        """The server's ``{"error", "detail"}`` body as an ApiError (anything else as text)."""
        try:
            response.read()
            body = response.json()
        except (ValueError, httpx.HTTPError):
            body = None
        if isinstance(body, dict) and "error" in body:
            return ApiError(response.status_code, str(body["error"]), body.get("detail"))
        if isinstance(body, dict) and "detail" in body:
            return ApiError(response.status_code, response.reason_phrase.lower(), body["detail"])
        text = response.text.strip()[:500] if response.content else ""
        return ApiError(response.status_code, f"HTTP {response.status_code} {response.reason_phrase}", text)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # -- jobs ---------------------------------------------------------------------------------

    def deploy(
        self,
        source: str | os.PathLike[str] | bytes,
        name: str | None = None,
        type: str | None = None,
        *,
        filename: str | None = None,
    ) -> dict[str, Any]:
        """Deploy or replace a job from a folder, a .zip, a single script, or bytes (a zip or a script).

        ``name`` defaults to the folder or file stem; bytes need a ``name`` (and a ``filename``
        unless they are a zip). Returns the job record.
        """
        params: dict[str, str] = {}
        if type:
            params["type"] = type
        if isinstance(source, bytes | bytearray):
            if not name:
                raise ApiError(0, "a name is needed to deploy bytes", "pass name=...")
            if zipfile.is_zipfile(io.BytesIO(source)):
                return self._put_package(name, "application/zip", [bytes(source)], len(source), params)
            if not filename:
                raise ApiError(0, "bytes that are not a zip need a filename", "pass filename='run.sh'")
            params["filename"] = filename
            return self._put_package(name, "application/octet-stream", [bytes(source)], len(source), params)

        path = Path(source).expanduser().resolve()
        name = name or (path.name if path.is_dir() else path.stem)
        if path.is_dir():
            with tempfile.TemporaryFile(prefix="jobyard-pkg-") as tmp:
                pack_folder(path, tmp)
                size = tmp.tell()
                return self._put_package(name, "application/zip", _iter_file(tmp), size, params)
        if not path.is_file():
            raise ApiError(0, f"nothing to deploy at {source}", "give a folder, a .zip or a script file")
        with path.open("rb") as f:
            size = path.stat().st_size
            if zipfile.is_zipfile(f):
                return self._put_package(name, "application/zip", _iter_file(f), size, params)
            params["filename"] = filename or path.name
            return self._put_package(name, "application/octet-stream", _iter_file(f), size, params)

    def _put_package(
        self, name: str, content_type: str, body: Any, size: int, params: dict[str, str]
    ) -> dict[str, Any]:
        # An explicit Content-Length lets the server refuse an oversized package before reading it.
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        result: dict[str, Any] = self._json(
            "PUT", f"/api/jobs/{_quoted(name)}", content=body, headers=headers, params=params
        )
        return result

    def jobs(self) -> list[dict[str, Any]]:
        """Every deployed job."""
        return list(self._json("GET", "/api/jobs")["jobs"])

    def job(self, name: str) -> dict[str, Any]:
        """One job: type, entry, settings, schedule, latest run."""
        return dict(self._json("GET", f"/api/jobs/{_quoted(name)}"))

    def delete(self, name: str) -> None:
        """Remove a job (its history goes with it)."""
        self._send("DELETE", f"/api/jobs/{_quoted(name)}")

    def get_settings(self, name: str) -> dict[str, Any]:
        """A job's settings.job."""
        return dict(self._json("GET", f"/api/jobs/{_quoted(name)}/settings"))

    def put_settings(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Replace a job's settings.job (validated by the server)."""
        return dict(self._json("PUT", f"/api/jobs/{_quoted(name)}/settings", json=settings))

    def start(self, name: str) -> dict[str, Any]:
        """Start a continuous job (again)."""
        return dict(self._json("POST", f"/api/jobs/{_quoted(name)}/start") or {})

    def stop(self, name: str) -> dict[str, Any]:
        """Stop a continuous job until the next start."""
        return dict(self._json("POST", f"/api/jobs/{_quoted(name)}/stop") or {})

    # -- runs ---------------------------------------------------------------------------------

    def run(self, name: str, args: Sequence[str] | str = (), **fields: Any) -> dict[str, Any]:
        """Enqueue a run of ``name`` with these arguments; returns the run record.

        ``fields`` are the API's: priority, idempotency_key, run_at, delay_s, timeout_s, env,
        callback_url, max_retries (None values are left out).
        """
        body: dict[str, Any] = {"arguments": args if isinstance(args, str) else list(args)}
        body.update({k: v for k, v in fields.items() if v is not None})
        return dict(self._json("POST", f"/api/jobs/{_quoted(name)}/runs", json=body))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """One run record."""
        return dict(self._json("GET", f"/api/runs/{_quoted(run_id)}"))

    def runs_page(
        self, name: str, limit: int = 50, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a job's history, newest first, and the cursor of the next page (or None)."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        page = self._json("GET", f"/api/jobs/{_quoted(name)}/runs", params=params)
        return list(page["runs"]), page.get("next")

    def runs(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """A job's newest ``limit`` runs, newest first."""
        return self.runs_page(name, limit)[0]

    def wait(self, run_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll a run (with backoff up to 1 s) until it is terminal; TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay_s = 0.02
        while True:
            run = self.get_run(run_id)
            if run.get("status") in TERMINAL:
                return run
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {run_id} is still {run.get('status')} after {timeout_s} s")
                delay_s = min(delay_s, left)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)

    def log(self, run_id: str) -> str:
        """A run's log as text: ``<ISO time> <INFO|ERR|SYS> <line>`` per line."""
        return self._send("GET", f"/api/runs/{_quoted(run_id)}/log").text

    def follow(self, run_id: str, *, reconnects: int = 5) -> Iterator[dict[str, Any]]:
        """Yield a run's log entries ``{"id", "t", "stream", "line"}`` live until the run ends.

        A dropped connection is resumed from the last entry seen (``Last-Event-ID``), at most
        ``reconnects`` times in a row. ``self.last_status`` holds the status the stream ended with.
        """
        self.last_status = None
        last_id: str | None = None
        failures = 0
        path = f"/api/runs/{_quoted(run_id)}/log/stream"
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                # No read timeout: a quiet script may print nothing for a long time.
                with connect_sse(
                    self._http, "GET", path, headers=headers, timeout=httpx.Timeout(30.0, read=None)
                ) as source:
                    if source.response.status_code >= 400:
                        raise self._error(source.response)
                    for event in source.iter_sse():
                        failures = 0
                        if event.event == "end":
                            self.last_status = (event.json() or {}).get("status") if event.data else None
                            return
                        if event.event not in ("line", "message") or not event.data:
                            continue
                        if last_id and event.id and _entry_key(event.id) <= _entry_key(last_id):
                            continue  # a resumed stream that replays from the start
                        entry = dict(event.json())
                        entry.setdefault("id", event.id)
                        if event.id:
                            last_id = event.id
                        yield entry
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if failures > reconnects:
                    raise ApiError(0, f"lost the log stream of run {run_id}", str(exc)) from exc
                time.sleep(min(0.2 * 2**failures, 2.0))
                continue
            # The server closed the stream without an end event: resume (bounded, like an error).
            failures += 1
            if failures > reconnects:
                return
            time.sleep(0.2)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Stop a queued or running run."""
        return dict(self._json("POST", f"/api/runs/{_quoted(run_id)}/cancel") or {})

    def retry(self, run_id: str) -> dict[str, Any]:
        """Run a finished run again as a new run; returns the new run."""
        return dict(self._json("POST", f"/api/runs/{_quoted(run_id)}/retry") or {})

    # -- dead letters, schedules, cluster -----------------------------------------------------

    def deadletters_page(
        self, limit: int = 50, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of dead letters (run_id, job, attempts, error), newest first, and the next cursor."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        page = self._json("GET", "/api/deadletters", params=params)
        return list(page["deadletters"]), page.get("next")

    def deadletters(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` runs that failed for good."""
        return self.deadletters_page(limit)[0]

    def replay(self, run_id: str) -> dict[str, Any]:
        """Enqueue a dead-lettered run again; returns the new run."""
        return dict(self._json("POST", f"/api/deadletters/{_quoted(run_id)}/replay") or {})

    def purge(self, run_id: str) -> None:
        """Drop a dead letter."""
        self._send("DELETE", f"/api/deadletters/{_quoted(run_id)}")

    def schedules(self) -> list[dict[str, Any]]:
        """Scheduled jobs and their next fire times."""
        return list(self._json("GET", "/api/schedules")["schedules"])

    def pause(self, job: str) -> dict[str, Any]:
        """Pause a job's schedule."""
        return dict(self._json("POST", f"/api/schedules/{_quoted(job)}/pause") or {})

    def resume(self, job: str) -> dict[str, Any]:
        """Resume a paused schedule."""
        return dict(self._json("POST", f"/api/schedules/{_quoted(job)}/resume") or {})

    def cluster(self) -> dict[str, Any]:
        """Workers, queue depths, dead letters and the scheduler leader."""
        return dict(self._json("GET", "/api/cluster"))

    def ready(self) -> bool:
        """True when the API answers /readyz (Redis reachable)."""
        try:
            return self._http.get("/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    # -- tokens -------------------------------------------------------------------------------

    def create_token(
        self, role: str, name: str | None = None, expires_in_s: float | None = None
    ) -> dict[str, Any]:
        """Make a token (the secret is in ``["token"]``, shown only this once)."""
        body: dict[str, Any] = {"role": role}
        if name:
            body["name"] = name
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        return dict(self._json("POST", "/api/tokens", json=body))

    def tokens(self) -> list[dict[str, Any]]:
        """Every token (without secrets)."""
        return list(self._json("GET", "/api/tokens")["tokens"])

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token now."""
        self._send("DELETE", f"/api/tokens/{_quoted(token_id)}")


def _entry_key(entry_id: str) -> tuple[int, ...]:
    """A Redis stream id ``ms-seq`` as a comparable tuple (other ids compare as text order)."""
    try:
        return tuple(int(part) for part in entry_id.split("-"))
    except ValueError:
        return (0,)
