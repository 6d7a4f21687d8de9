"""Issue 7, item 3, end to end: keys over a real socket to the live API, and
timing safety checked by construction over the whole service package.

tests/service/test_service_auth.py covers the rules on the ASGI app (and spies
on `hmac.compare_digest` inside `auth.key_matches`); here the same refusals are
checked on the wire (status, JSON body, challenge header), a refused key never
reaches the logs, the admin upload refuses before reading the body, and a
source scan makes sure no module in service/ compares keys any other way.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO
from tests.reliability.conftest import ADMIN_KEY, CLIENT_KEY, Stack, small_photo, stream_upload

pytestmark = pytest.mark.integration

JOB = "/v1/jobs/" + "0" * 32  # a client route: 404 once through auth
CLIENT_ROUTES = [("GET", JOB), ("GET", JOB + "/image"), ("POST", "/v1/filter")]
ADMIN_ROUTES = [("GET", "/v1/checkpoints"), ("POST", "/v1/checkpoints"),
                ("POST", "/v1/checkpoints/ckpt_x/activate"), ("DELETE", "/v1/checkpoints/ckpt_x"),
                ("POST", "/v1/training-jobs"), ("GET", "/v1/training-jobs/" + "0" * 32)]
QUERY_NAMES = ["api_key", "apikey", "key", "token", "access_token", "authorization"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(api: httpx.Client, method: str, path: str, **kw: object) -> httpx.Response:
    if method == "POST" and path == "/v1/filter":
        kw.setdefault("files", {"image": ("a.png", small_photo(), "image/png")})
    return api.request(method, path, **kw)  # type: ignore[arg-type]


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


WRONG: dict[str, dict[str, Any]] = {
    "no key": {},
    "wrong key": bearer("not-a-key-0123456789abcdef"),
    "client key plus a character": bearer(CLIENT_KEY + "x"),
    "client key minus a character": bearer(CLIENT_KEY[:-1]),
    "client key, other case": bearer(CLIENT_KEY.upper()),
    "scheme only": {"Authorization": "Bearer"},
    "basic scheme": {"Authorization": f"Basic {CLIENT_KEY}"},
    "bare key": {"Authorization": CLIENT_KEY},
    "X-API-Key header": {"X-API-Key": CLIENT_KEY},
    "key in a cookie": {"Cookie": f"api_key={CLIENT_KEY}; token={ADMIN_KEY}"},
    "non-ASCII key": {"Authorization": b"Bearer cl\xe9-\xe0-\xff"},
    "very long key": bearer("k" * 8000),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_client_routes_refuse_missing_and_wrong_keys_with_401(stack: Stack, case: str) -> None:
    with stack.api.client() as api:
        for method, path in CLIENT_ROUTES:
            assert_refused(call(api, method, path, headers=WRONG[case]), 401)


@pytest.mark.parametrize("name", QUERY_NAMES)
def test_keys_in_the_query_string_are_not_accepted(stack: Stack, name: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with stack.api.client() as api:
        for method, path in CLIENT_ROUTES:
            assert_refused(call(api, method, path, params={name: CLIENT_KEY}), 401)
        for method, path in ADMIN_ROUTES:
            assert_refused(call(api, method, path, params={name: ADMIN_KEY}), 401)
    server = [r for r in caplog.records if r.name.startswith(("safespot", "uvicorn", "fastapi"))]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in server)
    assert CLIENT_KEY not in logged and ADMIN_KEY not in logged  # a URL key never reaches the logs


def test_client_keys_are_403_on_every_admin_route_and_admin_keys_open_them(stack: Stack) -> None:
    with stack.api.client() as api:
        for method, path in ADMIN_ROUTES:
            assert_refused(call(api, method, path, headers=bearer(CLIENT_KEY)), 403)
            assert_refused(call(api, method, path), 401)
            assert_refused(call(api, method, path, headers=bearer("wrong-key-0123456789")), 401)
        listing = api.get("/v1/checkpoints", headers=bearer(ADMIN_KEY))
        assert listing.status_code == 200 and listing.json()["active"] == "default"
        for method, path in ADMIN_ROUTES[1:]:  # through auth: 404 unknown id, 415/422 no body
            assert call(api, method, path, headers=bearer(ADMIN_KEY)).status_code in (404, 415, 422)
        for key in (CLIENT_KEY, ADMIN_KEY):  # both roles open client routes
            assert api.get(JOB, headers=bearer(key)).status_code == 404


@pytest.mark.parametrize(("key", "status"), [(CLIENT_KEY, 403), ("wrong-key-0123456789", 401)])
def test_an_admin_upload_is_refused_before_its_body_is_read(stack: Stack, key: str, status: int) -> None:
    """A checkpoint within the size limit, with a declared length and the wrong
    key: answered before a byte of the body is sent.  (Over the limit, the
    body limit answers 413 first, also unread.)"""
    sent, answered, body = stream_upload(stack.api.port, "/v1/checkpoints", "file", bearer(key),
                                         900 * 1024, chunked=False, first_bytes=b"PK\x03\x04")
    assert (sent, answered) == (0, status) and body["error"]["code"] in ("forbidden", "unauthorized")


def test_an_unauthenticated_filter_upload_is_refused_before_its_body_is_read(stack: Stack) -> None:
    sent, answered, _ = stream_upload(stack.api.port, "/v1/filter", "image", bearer("wrong-key"),
                                      900 * 1024, chunked=False)
    assert (sent, answered) == (0, 401)


# ------------------------------------------------- timing safety, by construction
KEY_SETS = {"api_keys", "admin_keys"}


def _service_modules() -> list[Path]:
    return sorted((REPO / "service").rglob("*.py"))


def _names(node: ast.AST) -> set[str]:
    return {n.attr if isinstance(n, ast.Attribute) else n.id
            for n in ast.walk(node) if isinstance(n, ast.Attribute | ast.Name)}


def test_no_module_compares_keys_except_through_compare_digest() -> None:
    """Membership tests (`key in settings.api_keys`) and `==` on key sets would
    take time that depends on the key; only `auth.key_matches` may touch the
    key sets' contents, and it must use hmac.compare_digest on every key with
    no early exit."""
    offenders: list[str] = []
    for path in _service_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and _names(node) & KEY_SETS:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and _names(node.func) & {"startswith", "endswith", "find", "index"} \
                    and _names(node) & KEY_SETS:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "key sets compared outside compare_digest:\n" + "\n".join(offenders)

    auth = ast.parse((REPO / "service" / "auth.py").read_text())
    matcher = next(n for n in ast.walk(auth) if isinstance(n, ast.FunctionDef) and n.name == "key_matches")
    loops = [n for n in ast.walk(matcher) if isinstance(n, ast.For)]
    assert len(loops) == 1, "key_matches walks the configured keys once"
    assert "compare_digest" in _names(loops[0]) and "hmac" in _names(loops[0])
    exits = [n for n in ast.walk(loops[0]) if isinstance(n, ast.Break | ast.Return)]
    assert not exits, "no early exit: every key is compared whatever matched"

    uses = [f"{path.relative_to(REPO)}" for path in _service_modules()
            if path.name != "auth.py" and KEY_SETS & _names(ast.parse(path.read_text()))]
    assert uses == ["service/settings.py"], f"key sets read outside auth/settings: {uses}"
