"""Serve deployments composed into the Troupe application (deployments/app.py)."""

INTERNAL_LOGGING = {"enable_access_log": False}
"""Deployments called by other deployments, not by people: Serve's access log line per call
(thousands a second under load) cost a tenth of the ToolPool's CPU, and Troupe's own events,
metrics and spans already record every tool and model call. The Gateway keeps its HTTP log."""
