"""The web dashboard at ``/``: its pages, forms, live views and static files (``services.dashboard``).

Its routes are left out of the OpenAPI document: they are for browsers, not for other services.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.dashboard import actions, live, pages
from services.dashboard.web import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
router.include_router(pages.router)
router.include_router(actions.router)
router.include_router(live.router)
