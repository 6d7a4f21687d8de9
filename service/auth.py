"""Bearer-key authentication with two roles.

- client routes accept any key of `api_keys` or `admin_keys`; when `api_keys`
  is empty they are OPEN (a deployment behind its own gateway may want that;
  start-up logs a warning);
- admin routes accept only `admin_keys`; with none configured they are refused
  (403) whatever is sent.

Keys travel only in `Authorization: Bearer <key>`: a key in the query string
would end up in access logs and browser history, so `?api_key=` or similar is
ignored (and the request is treated as carrying no key).
"""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from service.deps import SettingsDep
from service.errors import Forbidden, Unauthorized
from service.settings import Settings


class Role(StrEnum):
    anonymous = "anonymous"  # only on open client routes
    client = "client"
    admin = "admin"


# auto_error=False: we raise our own 401 in the JSON error shape.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")


def key_matches(presented: str, keys: frozenset[str]) -> bool:
    """Timing-safe membership test.

    Compares against every configured key (no early exit on a match), each with
    `hmac.compare_digest`, so the time taken does not reveal which key matched
    or how many leading characters were right."""
    given = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def role_of(key: str | None, settings: Settings) -> Role | None:
    """The role a presented key grants, or None for an unknown key."""
    if key is None:
        return None
    is_admin = key_matches(key, settings.admin_keys)
    is_client = key_matches(key, settings.api_keys)
    if is_admin:
        return Role.admin
    return Role.client if is_client else None


async def presented_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str | None:
    """The bearer key sent, or None (HTTPBearer gives no credentials for a missing,
    empty or non-Bearer header)."""
    return credentials.credentials if credentials else None


PresentedKey = Annotated[str | None, Depends(presented_key)]


def require_client(key: PresentedKey, settings: SettingsDep) -> Role:
    """Dependency of client routes: the caller's role; Unauthorized when the key is missing or wrong."""
    role = role_of(key, settings)
    if role is not None:
        return role
    if key is None and not settings.api_keys:
        return Role.anonymous
    if key is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    raise Unauthorized("invalid API key")


class EarlyClientAuth:
    """Refuse uploads without a valid client key *before* their body is read.

    FastAPI parses a multipart form before it runs the route's dependencies,
    so without this an unauthenticated client could make us read and spool
    a whole upload (up to the byte limit) just to be told 401.  Pure ASGI:
    it looks only at the header, then hands the untouched request on.
    """

    def __init__(self, app: ASGIApp, settings: Settings, paths: frozenset[str]) -> None:
        self.app, self.settings, self.paths = app, settings, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            try:  # the header read exactly as the route's own dependency reads it
                require_client(await presented_key(await _bearer(HTTPConnection(scope))), self.settings)
            except Unauthorized as refused:
                await refused.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def require_admin(key: PresentedKey, settings: SettingsDep) -> Role:
    """Dependency of admin routes."""
    if not settings.admin_keys:
        raise Forbidden("admin routes are disabled: no admin key is configured")
    if key is None:
        raise Unauthorized("missing admin key: send 'Authorization: Bearer <key>'")
    role = role_of(key, settings)
    if role is Role.admin:
        return role
    if role is Role.client:
        raise Forbidden("this route needs an admin key")
    raise Unauthorized("invalid API key")


ClientRole = Annotated[Role, Depends(require_client)]
AdminRole = Annotated[Role, Depends(require_admin)]
