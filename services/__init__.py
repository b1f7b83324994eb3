"""The HTTP API role: REST routes under /api, health probes, and the routers in ``services.routes``."""
