"""The API's routers (``jobs``: /v1/jobs; ``ops``: health, readiness, metrics) and their dependencies."""
