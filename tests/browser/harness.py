"""A real SafeSpot service for the browser, and Debian's headless Chromium to drive it.

Used by the browser tests (`test_page.py`) and by `screenshot.py` (the README's
screenshot).  Everything runs as subprocesses of the current interpreter
(`python -m safespot_cli.main serve|worker`, started by bench/stack.py), so it
exercises exactly what a user starts; the network is never used (Selenium Manager is bypassed by
naming the driver and the browser binary).
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.stack import REPO, Stack, free_port, service_env

FIXTURES = REPO / "tests" / "fixtures"
CHROMIUM = Path(os.environ.get("SAFESPOT_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SAFESPOT_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-extensions", "--hide-scrollbars",
               "--force-color-profile=srgb", "--force-device-scale-factor=1")
INSTALL_HINT = ("install Debian's Chromium and its driver: "
                "apt-get install -y chromium chromium-driver (scripts/test does this)")
READY_TIMEOUT_S = 120.0


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed (the tests fail on it, never skip)."""


def with_db(redis_url: str, db: int) -> str:
    """The same server, another database number (keeps this stack's keys apart)."""
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


# ------------------------------------------------------------------ service
@contextmanager
def running_service(workdir: Path, *, redis_url: str | None = None, model: str | None = None,
                    api_keys: str = "", admin_keys: str = "", extra_env: dict[str, str] | None = None,
                    ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[Stack]:
    """`safespot serve` (plus `safespot worker` when `redis_url` is given) until /readyz is 200.

    Without `redis_url`, serve runs its embedded worker (the single-command mode).  Logs go to
    files in `workdir`; their tails are in the error when the stack does not come up."""
    env = service_env(redis_url, threads=int(os.environ.get("OMP_NUM_THREADS", "1")),
                      data_dir=workdir / "data", checkpoint_dir=workdir / "checkpoints",
                      api_keys=api_keys, admin_keys=admin_keys, default_model=model, log_level="info",
                      metrics_port=0)  # the worker's own metrics server: not needed here
    env.update(extra_env or {})
    with Stack(workdir) as stack:
        if redis_url:
            stack.start("worker", ["safespot_cli.main", "worker", "--max-wait-ms", "20", "--name",
                                   f"browser-test-{workdir.name}"], env)
        stack.start_api(env)
        stack.wait_http(stack.url + "readyz", ready_timeout_s, "the service to be ready")
        yield stack


# ------------------------------------------------------------------ browser
def check_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            raise BrowserMissing(f"{path} not found: {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        raise BrowserMissing("selenium is not installed: pip install -e '.[dev]'") from e


@contextmanager
def chromium(download_dir: Path | None = None, width: int = 1280, height: int = 900,
             offline: bool = False) -> Iterator[Any]:
    """A headless Chromium (Debian's binary and driver) with a fresh profile.

    `offline`: every host but this machine's loopback is unreachable (a dead proxy for
    everything that is not loopback, no name resolution), as on a server without internet;
    the DevTools performance log records each request (see `requested_urls`)."""
    check_browser()
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager: never phone home
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="safespot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    # The console always (for browser_errors); every request too when offline (requested_urls).
    logging_prefs = {"browser": "ALL"}
    if offline:
        # A proxy on a port nothing listens on refuses every request; loopback bypasses it.
        options.add_argument(f"--proxy-server=http://127.0.0.1:{free_port()}")
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
        logging_prefs["performance"] = "ALL"
    options.set_capability("goog:loggingPrefs", logging_prefs)
    if download_dir is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(download_dir), "download.prompt_for_download": False,
            "download.directory_upgrade": True, "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        if download_dir is not None:
            driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                   {"behavior": "allow", "downloadPath": str(download_dir)})
        yield driver
    finally:
        driver.quit()
        import shutil

        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """The URLs the browser asked for since the last call (needs `chromium(offline=True)`)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


# -------------------------------------------------------------- page steps
def wait_for(driver: Any, condition: Any, timeout_s: float, message: str) -> Any:
    """Poll `condition(driver)`; elements that the page re-renders meanwhile are looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(condition, message)


def browser_errors(driver: Any) -> list[str]:
    """The page's console errors since the last call (script errors, failed module loads); the
    browser's own line for each refused request (a 4xx the page then shows) is left out."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


def page_state(driver: Any) -> str:
    return str(driver.execute_script("return document.body.dataset.state || ''"))


def filter_on_page(driver: Any, photo: Path, *, preset: str = "standard", norm: str = "linf",
                   eps: str | None = "8/255", api_key: str | None = None, timeout_s: float = 60.0) -> str:
    """Fill in the form on the loaded page, submit, wait until it ends; returns 'done' or 'error'.
    eps None keeps the page's own default: the budget the active model was trained for."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if api_key is not None:
        if driver.find_element(By.ID, "key-box").get_attribute("open") is None:
            driver.find_element(By.CSS_SELECTOR, "#key-box summary").click()
        key = driver.find_element(By.ID, "api-key")
        key.clear()
        key.send_keys(api_key)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    Select(driver.find_element(By.ID, "preset")).select_by_value(preset)
    Select(driver.find_element(By.ID, "norm")).select_by_value(norm)
    if eps is None:  # the page fills it in once it has the active model (GET v1/model)
        wait_for(driver, lambda d: d.find_element(By.ID, "model-box").is_displayed(), 10, "no active model shown")
    else:
        field_ = driver.find_element(By.ID, "eps")
        field_.clear()
        field_.send_keys(eps)
    wait_for(driver, lambda d: d.find_element(By.ID, "submit").is_enabled(), 5, "submit stays disabled")
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: page_state(d) in ("done", "error"), timeout_s,
             f"the page did not finish filtering {photo.name} within {timeout_s:.0f} s")
    return page_state(driver)


def image_sizes(driver: Any) -> dict[str, list[int]]:
    """Natural sizes of the three result images, by element id."""
    return dict(driver.execute_script("""
        const out = {};
        for (const id of ["img-original", "img-filtered", "img-diff"]) {
          const img = document.getElementById(id);
          out[id] = [img.naturalWidth, img.naturalHeight];
        }
        return out;"""))


def blob_bytes(driver: Any, url: str) -> bytes:
    """The bytes behind a URL as the page sees it (blob: URLs included)."""
    encoded = driver.execute_async_script("""
        const [url, done] = arguments;
        fetch(url).then(r => r.blob()).then(b => {
          const reader = new FileReader();
          reader.onload = () => done(reader.result.split(",")[1]);
          reader.readAsDataURL(b);
        }).catch(e => done("ERROR " + e));""", url)
    if encoded.startswith("ERROR"):
        raise RuntimeError(encoded)
    return base64.b64decode(encoded)


def full_page_screenshot(driver: Any, path: Path, width: int = 1280) -> bytes:
    """A PNG of the whole page at `width` CSS pixels (Chromium's DevTools capture beyond the
    viewport: no stitching, no window-size guesswork)."""
    driver.set_window_size(width, 900)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.2)  # one frame for the resize to lay out
    size = driver.execute_script(
        "const e = document.documentElement; return [e.clientWidth, Math.ceil(e.scrollHeight)]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "fromSurface": True,
        "clip": {"x": 0, "y": 0, "width": int(size[0]), "height": int(size[1]), "scale": 1}})
    png = base64.b64decode(shot["data"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return png
