"""Routes with a fast path: the well-formed request skips FastAPI's dependency solving.

FastAPI spends most of a small request on the generic work around the endpoint: solving the
dependency tree, validating each parameter through its own field machinery, building error
lists. For the hot routes (enqueue) that was about as much CPU as the enqueue itself. An
endpoint decorated with ``@fast_path(handler)`` and served by a ``FastRoute`` first goes
through ``handler(request)``, which parses and validates the common shape of the request by
hand and calls the very same endpoint function, or returns ``None``; then FastAPI's own
handler takes the request from the start (the body is cached on the request) and produces
every answer it always has. A fast handler must therefore return ``None`` before it has done
anything that shows, and leave every validation error to FastAPI: its 422s (field paths,
messages) then stay exactly what they were. Errors the endpoint raises itself (404, 409, ...)
and the authentication errors are exceptions either way, answered by the same handlers.

The OpenAPI document is FastAPI's, from the endpoint's signature, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

FastHandler = Callable[[Request], Awaitable[Response | None]]
F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__jobyard_fast_path__"


class NotFast(Exception):
    """Raised inside a fast handler (by ``json_body``) to hand the request to FastAPI."""


def fast_path(handler: FastHandler) -> Callable[[F], F]:
    """Give an endpoint a fast handler (takes effect on routes of class ``FastRoute``)."""

    def attach(endpoint: F) -> F:
        setattr(endpoint, _ATTR, handler)
        return endpoint

    return attach


class FastRoute(APIRoute):
    """An ``APIRoute`` that tries its endpoint's fast handler first (a plain one without)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        slow = super().get_route_handler()
        fast: FastHandler | None = getattr(self.endpoint, _ATTR, None)
        if fast is None:
            return slow

        async def handler(request: Request) -> Response:
            try:
                response = await fast(request)
            except NotFast:
                response = None
            return response if response is not None else await slow(request)

        return handler


def _is_json(content_type: str | None) -> bool:
    # Plain application/json only: FastAPI also takes +json types and odd spellings, which go to it.
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


async def json_body(request: Request) -> Any:
    """The body parsed as FastAPI parses it (``None`` when empty); ``NotFast`` when FastAPI should.

    Only bodies with a ``Content-Length`` are read here (so ``services.app.BodyCap`` has already
    refused an oversized one); a chunked body, a non-JSON content type or a body that is not
    JSON are left to FastAPI, which answers them as it always has.
    """
    if "content-length" not in request.headers:
        raise NotFast
    try:
        body = await request.body()
    except HTTPException:
        raise
    except Exception as exc:  # what FastAPI answers for a body it could not read
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    if not body:
        return None
    if not _is_json(request.headers.get("content-type")):
        raise NotFast
    try:
        return json.loads(body)
    except Exception as exc:  # not JSON, not UTF-8, nested too deep: FastAPI's answer
        raise NotFast from exc


class FastJSONResponse(JSONResponse):
    """A JSON response rendered by orjson (~12x faster than ``json`` on a batch's thousand runs).

    The same JSON as ``JSONResponse`` sends (compact, UTF-8), but for float spellings (``1e-7``
    for ``1e-07``). What orjson cannot render (an integer over 64 bits in a run's result) is
    rendered by ``JSONResponse`` as before.
    """

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return super().render(content)
