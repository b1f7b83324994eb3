"""The Lua scripts under ``jobyard/lua/``, registered on a client by name."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

SCRIPT_NAMES = (
    "create_run",
    "create_many",
    "push_message",
    "fetch",
    "claim_run",
    "finish_run",
    "cancel_run",
    "renew_leases",
    "unpark",
    "take_due",
    "requeue_dead",
)


INCLUDE = "--! include "


@cache
def source(name: str) -> str:
    """The text of ``jobyard/lua/<name>.lua``, with each ``--! include <other>`` line replaced by
    the text of ``<other>.lua`` (Redis scripts cannot call each other; shared functions live in
    files named ``_*.lua``)."""
    text = resources.files("jobyard").joinpath("lua", f"{name}.lua").read_text()
    return "".join(
        source(line[len(INCLUDE) :].strip()) if line.startswith(INCLUDE) else line
        for line in text.splitlines(keepends=True)
    )


class Scripts:
    """Every script registered on one client (sync or asyncio); call as ``scripts.fetch(keys, args)``."""

    def __init__(self, client: Any) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(source(name)))

    create_run: Any
    create_many: Any
    push_message: Any
    fetch: Any
    claim_run: Any
    finish_run: Any
    cancel_run: Any
    renew_leases: Any
    unpark: Any
    take_due: Any
    requeue_dead: Any
