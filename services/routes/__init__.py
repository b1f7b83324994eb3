"""HTTP routers. Every module here with a module-level ``router`` (a FastAPI ``APIRouter``) is
included by ``services.app.create_app``: add a module, not an edit to the app."""
