"""The HTTPS door: REST API (OpenAPI at /api/openapi.json) and, later, the web UI."""
