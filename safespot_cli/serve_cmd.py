"""`safespot serve`: the HTTP API, with an in-process worker when there is no Redis."""

from __future__ import annotations

import argparse
from typing import Any

from safespot_cli import common
from safespot_cli.errors import usage_errors

HELP = """Run the filter API.

Without SAFESPOT_REDIS_URL the whole filter runs in this one process (the API
plus an embedded worker that loads the active model once).  With it, this
process only enqueues; run `safespot worker` (any number, anywhere that
reaches Redis) to process jobs.  Settings come from SAFESPOT_* variables:
SAFESPOT_API_KEYS, SAFESPOT_ADMIN_KEYS, SAFESPOT_DATA_DIR, SAFESPOT_CHECKPOINT_DIR,
SAFESPOT_MAX_UPLOAD_BYTES, SAFESPOT_MAX_PIXELS, SAFESPOT_MAX_QUEUE, ...

examples:
  safespot serve --port 8000                     single machine, no Redis
  SAFESPOT_REDIS_URL=redis://localhost:6379/0 safespot serve --host 0.0.0.0"""


def register(sub: Any) -> None:
    p = common.add_command(sub, "serve", "run the HTTP API (and an embedded worker without Redis)", HELP, run)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="overrides SAFESPOT_LOG_LEVEL")


def build_backend(settings: Any) -> Any:
    """The embedded worker without Redis (imports torch), else the Redis backend."""
    if settings.redis_url is None:
        from worker.embedded import EmbeddedBackend

        return EmbeddedBackend(settings)
    from service.backends.redis_backend import RedisJobBackend

    return RedisJobBackend(settings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.log import configure_logging
    from service.settings import load_settings

    overrides = {"log_level": args.log_level} if args.log_level else {}
    with usage_errors(SystemExit):  # load_settings exits with the invalid settings named
        settings = load_settings(**overrides)
    configure_logging(settings.log_level)
    backend = build_backend(settings)
    start, stop = getattr(backend, "start", None), getattr(backend, "stop", None)
    if callable(start):
        start()  # the embedded worker loads its model before the port opens
    try:
        app = create_app(settings, backend)
        uvicorn.run(app, host=args.host, port=args.port, log_config=None,
                    log_level=settings.log_level, access_log=False, server_header=False)
    finally:
        if callable(stop):
            stop()
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    return 0
