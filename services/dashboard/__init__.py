"""The server-rendered web dashboard, served by the API process at ``/``.

- ``session``  logging in with an API token: a signed cookie naming a session kept in Redis
- ``csrf``     per-session form tokens and the same-origin check on every change
- ``web``      the route class (HTML errors, login redirects, security headers) and role checks
- ``views``    Jinja2 (autoescaped), the display filters, static file URLs
- ``queries``  the reads behind the pages, all paginated
- ``pages``    the pages (jobs, a job, a run, the cluster) and the login form
- ``actions``  the forms that change something (deploy, run, cancel, replay, ...)
- ``live``     what the pages poll or follow: small JSON views, the log event stream, downloads

``services/routes/dashboard.py`` puts their routers together.
"""
