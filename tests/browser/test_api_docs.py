"""/docs (Swagger UI) and /redoc (ReDoc) render in a real headless Chromium that cannot
reach anything but this machine: their scripts and styles come from the installed package
(fastapi-offline), never a CDN.  One `safespot serve` (embedded worker, the tiny model)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.harness import (
    BrowserMissing,
    Stack,
    check_browser,
    chromium,
    requested_urls,
    running_service,
    wait_for,
)
from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(240)]

OPERATIONS = ("/v1/filter", "/v1/jobs/{job_id}", "/v1/checkpoints")
RENDER_TIMEOUT_S = 30.0
# ReDoc's bundle hard-codes the badge under its menu ("API docs by Redocly"): offline the
# image is simply missing; nothing the page needs comes from there.
DECORATIONS = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        check_browser()
    except BrowserMissing as e:
        pytest.fail(f"the browser tests need Chromium: {e}")
    with running_service(tmp_path_factory.mktemp("docs-stack"), model=str(TINY_MODEL)) as running:
        yield running


@pytest.fixture
def driver() -> Iterator[Any]:
    with chromium(offline=True) as browser:
        yield browser


def page_text(driver: Any) -> str:
    return str(driver.execute_script("return document.body ? document.body.innerText : ''"))


def assert_only_this_server(driver: Any, stack: Stack) -> None:
    urls = requested_urls(driver)
    assert any(url.startswith(stack.url) and url.endswith(".js") for url in urls), urls
    # chrome:// are the browser's own pages (the new tab before the first load).
    network = [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:", "//"))]
    elsewhere = [url for url in network if not url.startswith(stack.url) and url not in DECORATIONS]
    assert not elsewhere, f"the docs asked another host: {elsewhere}"


def test_the_browser_really_is_offline(stack: Stack, driver: Any) -> None:
    """The check below means something only if a CDN would fail here."""
    driver.set_script_timeout(20)
    outcome = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css", {mode: "no-cors"})
          .then(() => done("reached"), () => done("failed"));""")
    assert outcome == "failed"


def test_swagger_ui_lists_the_operations_offline(stack: Stack, driver: Any) -> None:
    driver.get(stack.url + "docs")
    wait_for(driver, lambda d: d.find_elements("css selector", ".opblock-summary-path"),
             RENDER_TIMEOUT_S, "Swagger UI rendered no operation")
    paths = {e.text.replace("\u200b", "").strip()
             for e in driver.find_elements("css selector", ".opblock-summary-path")}
    assert set(OPERATIONS) <= paths, paths
    filter_op = driver.find_element("css selector", ".opblock-post .opblock-summary-path[data-path='/v1/filter']")
    assert filter_op.is_displayed()
    assert "SafeSpot" in driver.find_element("css selector", ".info .title").text
    assert_only_this_server(driver, stack)


def test_redoc_lists_the_operations_offline(stack: Stack, driver: Any) -> None:
    driver.get(stack.url + "redoc")
    wait_for(driver, lambda d: "/v1/filter" in page_text(d), RENDER_TIMEOUT_S,
             "ReDoc rendered no operation")
    text = page_text(driver)
    assert "SafeSpot" in text
    for operation in OPERATIONS:
        assert operation in text, operation
    menu = driver.find_elements("css selector", "[role=menuitem], .menu-content li")
    assert len(menu) >= len(OPERATIONS)
    assert_only_this_server(driver, stack)
