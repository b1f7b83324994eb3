"""``python -m jobyard`` is the ``jobyard`` command."""

from __future__ import annotations

from jobyard.cli import main

main()
