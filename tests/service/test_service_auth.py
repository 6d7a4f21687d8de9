"""Issue 7, item 3: no key, wrong key, client key on admin routes, key in the
query string, timing-safe comparison."""

from __future__ import annotations

import hmac

import pytest
from fastapi.testclient import TestClient
from service_testkit import ADMIN_KEY, CLIENT_KEY, encode, photo

from service import auth
from service.app import create_app
from service.settings import Settings

JOB = "/v1/jobs/" + "0" * 32  # a client route that needs no body (404 once through auth)
ADMIN_ROUTES = [("GET", "/v1/checkpoints"), ("POST", "/v1/checkpoints"),
                ("POST", "/v1/checkpoints/ckpt_x/activate"), ("DELETE", "/v1/checkpoints/ckpt_x"),
                ("POST", "/v1/training-jobs"), ("GET", "/v1/training-jobs/" + "0" * 32)]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]


def test_client_route_without_key_is_401_with_a_challenge(client):
    response = client.get(JOB)
    assert_refused(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [
    bearer("wrong-key"), bearer(CLIENT_KEY + "x"), bearer(CLIENT_KEY[:-1]),
    {"Authorization": f"Basic {CLIENT_KEY}"}, {"Authorization": CLIENT_KEY},
    {"X-API-Key": CLIENT_KEY}, bearer(""),
])
def test_client_route_with_a_wrong_key_is_401(client, headers):
    assert_refused(client.get(JOB, headers=headers), 401)


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token"])
def test_keys_in_the_query_string_are_not_accepted(client, param):
    assert_refused(client.get(JOB, params={param: CLIENT_KEY}), 401)
    assert_refused(client.get("/v1/checkpoints", params={param: ADMIN_KEY}), 401)


def test_client_and_admin_keys_both_open_client_routes(client):
    for key in (CLIENT_KEY, ADMIN_KEY):
        assert client.get(JOB, headers=bearer(key)).status_code == 404  # through auth: no such job


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_client_keys_and_no_keys(client, method, path):
    assert_refused(client.request(method, path, headers=bearer(CLIENT_KEY)), 403)
    assert_refused(client.request(method, path), 401)
    assert_refused(client.request(method, path, headers=bearer("nope")), 401)


def test_admin_key_opens_admin_routes(client):
    assert client.get("/v1/checkpoints", headers=bearer(ADMIN_KEY)).status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_are_refused_when_no_admin_key_is_configured(tmp_path, method, path):
    from service_testkit import FakeJobBackend

    settings = Settings(api_keys=CLIENT_KEY, data_dir=tmp_path)
    with TestClient(create_app(settings, FakeJobBackend())) as client:
        for headers in ({}, bearer(CLIENT_KEY), bearer(ADMIN_KEY), bearer("")):
            assert_refused(client.request(method, path, headers=headers), 403)


def test_client_routes_are_open_without_client_keys_but_wrong_keys_still_fail(tmp_path):
    from service_testkit import FakeJobBackend

    settings = Settings(admin_keys=ADMIN_KEY, data_dir=tmp_path)
    with TestClient(create_app(settings, FakeJobBackend())) as client:
        assert client.get(JOB).status_code == 404
        assert client.get(JOB, headers=bearer(ADMIN_KEY)).status_code == 404
        assert_refused(client.get(JOB, headers=bearer("wrong")), 401)
        assert_refused(client.get("/v1/checkpoints"), 401)


def test_the_filter_upload_itself_needs_a_key(client, backend):
    files = {"image": ("a.png", encode(photo(), "PNG"), "image/png")}
    assert_refused(client.post("/v1/filter", files=files), 401)
    assert not backend.requests


def test_comparison_is_timing_safe_and_checks_every_key(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = frozenset({"k1-aaaaaaaaaaaaaaaa", "k2-bbbbbbbbbbbbbbbb", "k3-cccccccccccccccc"})
    for presented in ("k1-aaaaaaaaaaaaaaaa", "k3-cccccccccccccccc", "nope"):
        calls.clear()
        assert auth.key_matches(presented, keys) is (presented in keys)
        assert len(calls) == len(keys), "no early exit on the first match"
        assert {b for _, b in calls} == {k.encode() for k in keys}


def test_role_is_decided_by_comparing_against_both_key_sets(monkeypatch):
    settings = Settings(api_keys="c-1111111111111111", admin_keys="a-2222222222222222")
    count = 0
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        nonlocal count
        count += 1
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.role_of("a-2222222222222222", settings) is auth.Role.admin
    assert auth.role_of("c-1111111111111111", settings) is auth.Role.client
    assert auth.role_of("x", settings) is None
    assert count == 6  # 2 keys x 3 calls: the same work whatever the answer
