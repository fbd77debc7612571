"""The web console: server-rendered pages (Jinja2) and a little vanilla JavaScript over the
API's own JSON and SSE routes. Every asset is served from this package; nothing from a CDN."""

from deployments.console.routes import router

__all__ = ["router"]
