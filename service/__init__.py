"""The SafeSpot HTTP API (FastAPI).  Never imports torch: it talks to the
workers only through a JobBackend (Redis/RQ, or the embedded worker).
Entry point: `service.app.create_app(settings, backend)`."""
