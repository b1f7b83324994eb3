"""jobyard: self-hosted background jobs on Redis."""

from __future__ import annotations

__version__ = "0.1.0"
