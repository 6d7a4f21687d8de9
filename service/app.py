"""The FastAPI application: `create_app(settings, backend)`.

Wiring only: settings, backend and metrics go on `app.state` (routes get them
as dependencies), one router per resource, the error mapping, the request
observer, body limits by route, and the static page when there is one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.responses import FileResponse, Response
from starlette.types import Scope

from service.auth import EarlyClientAuth
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.middleware import BodyLimit, RequestObserver
from service.routes import checkpoints, health, jobs, model, training
from service.settings import Settings
from worker.protocol import JobBackend

STATIC_DIR = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries and the small text fields
DEFAULT_BODY_BYTES = 1024 * 1024  # JSON bodies of the other routes
# The page at `/` (service/static, served under /static): revalidated on each load (ETag), so a new deployment's page
# is seen at once, and confined to this origin: it keeps the API key in localStorage.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

DESCRIPTION = """\
Protect images before publication: `POST /v1/filter` returns a minimally
changed copy of a photo on which the classifier keeps its label under attack
(a *safe spot*), with scores saying how robust it is.

**Auth**: `Authorization: Bearer <key>`.  Client routes accept client and admin
keys (and are open when no client key is configured); admin routes need an
admin key.  **Errors** are always `{"error": {"code", "message"}}`.
**Output** is a lossless PNG: a lossy re-encode would erase the perturbation.
"""


def body_limit_for(settings: Settings) -> Callable[[str, str], int]:
    """Byte limit of a request body by route: uploads get their file limit plus
    room for the multipart framing; everything else is small JSON.  Matched on
    the path's end so that a proxy prefix (root_path) does not shrink the limit."""
    def limit(method: str, path: str) -> int:
        path = path.rstrip("/")
        if method == "POST" and path.endswith("/v1/filter"):
            return settings.max_upload_bytes + FORM_OVERHEAD_BYTES
        if method == "POST" and path.endswith("/v1/checkpoints"):
            return settings.max_checkpoint_bytes + FORM_OVERHEAD_BYTES
        return DEFAULT_BODY_BYTES
    return limit


class PageFiles(StaticFiles):
    """StaticFiles with PAGE_HEADERS on what it serves (errors keep the API's JSON shape)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code < 400:
            response.headers.update(PAGE_HEADERS)
        return response


def create_app(settings: Settings, backend: JobBackend | None = None) -> FastAPI:
    """Build the API around a job backend.

    With `backend=None`, settings.redis_url must be set (settings.redis_client()
    says so) and a RedisJobBackend is built.  The single-process mode passes the
    embedded backend (from the worker package) explicitly; this package never
    builds it (no torch here)."""
    owns_backend = backend is None
    if backend is None:
        from service.backends.redis_backend import RedisJobBackend

        backend = RedisJobBackend(settings)

    # Pillow's own bomb guard at our limit (it errors at twice it); images.py checks first.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.warn_about_weak_setup()
        yield
        close = getattr(backend, "close", None)
        if owns_backend and callable(close):
            close()

    # /docs and /redoc load Swagger UI and ReDoc from the installed package, never a CDN:
    # they work on a machine without internet.
    app = FastAPIOffline(title="SafeSpot", version="1", description=DESCRIPTION, lifespan=lifespan,
                         docs_url="/docs", redoc_url="/redoc")
    app.state.settings = settings
    app.state.backend = backend
    app.state.metrics = ServiceMetrics(backend)
    # Decoding a 40-megapixel upload takes ~160 MB: bound how many run at once so a
    # burst of large uploads queues here instead of exhausting memory.
    app.state.decode_limiter = CapacityLimiter(settings.max_concurrent_decodes)

    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(model.router)
    app.include_router(checkpoints.router)
    app.include_router(training.router)
    if (STATIC_DIR / "index.html").is_file():  # the page at `/`, its files under /static
        index = STATIC_DIR / "index.html"

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(index, headers=PAGE_HEADERS)

        # Not mounted at `/`: unknown paths stay 404 "unmatched" in the metrics, not "/".
        app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=sorted(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit_for=body_limit_for(settings), metrics=app.state.metrics)
    app.add_middleware(EarlyClientAuth, settings=settings, paths=frozenset({"/v1/filter"}))
    app.add_middleware(RequestObserver, metrics=app.state.metrics)  # outermost: sees every answer
    return app
