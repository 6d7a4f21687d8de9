"""The Admin tab doing the admin's job, in a real headless Chromium, with the admin key, against
both deployments (the `stack` fixture of tests/browser/conftest.py): upload a checkpoint (file
picker with upload progress, and drag and drop), see its status and vetting figures, activate
it, delete another, start a short training run and follow it to the end; the API's refusals
shown.  Screenshot: test-artifacts/admin-training.png."""

from __future__ import annotations

import base64
import typing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.browser.checkpoints import unvettable_checkpoint, variant_checkpoint, wait_until_vetted
from tests.browser.conftest import ADMIN_KEY, ARTIFACTS
from tests.browser.harness import Stack, full_page_screenshot, wait_for
from worker.protocol import CheckpointStatus

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(360)]

VETTING_FIELDS = ("clean_acc", "pgd_acc", "safe_spot_rate")
UPLOAD_THROTTLE_BYTES_S = 256 * 1024  # slow enough that the upload reports progress on the way
BOGUS_BYTES = 768 * 1024


def api_client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)


def by_css(driver: Any, selector: str) -> Any:
    return driver.find_element("css selector", selector)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def open_admin(driver: Any, stack: Stack) -> None:
    driver.get(stack.url + "#admin")
    key = driver.find_element("id", "admin-key")
    key.clear()
    key.send_keys(ADMIN_KEY)
    driver.find_element("id", "admin-load").click()
    wait_for(driver, lambda d: d.find_element("id", "ckpt-table").get_attribute("data-loaded") == "1", 15,
             f"the checkpoints were not listed: {text_of(driver, 'admin-error')}")


def row(driver: Any, checkpoint_id: str) -> Any:
    return by_css(driver, f'#ckpt-rows tr[data-id="{checkpoint_id}"]')


def listed(driver: Any) -> list[str]:
    return [r.get_attribute("data-id") for r in driver.find_elements("css selector", "#ckpt-rows tr")]


def wait_for_status(driver: Any, checkpoint_id: str, statuses: tuple[str, ...], timeout_s: float = 150) -> str:
    """The row's status once it is one of `statuses` (the page refreshes while vetting).  Vetting
    takes about 20 s alone; 150 s leaves room for a CI machine busy with other work (a 90 s limit
    failed once while two vettings and a measurement shared the 2 cores)."""
    wait_for(driver, lambda d: row(d, checkpoint_id).get_attribute("data-status") in statuses, timeout_s,
             f"{checkpoint_id} never became {statuses}")
    return str(row(driver, checkpoint_id).get_attribute("data-status"))


def uploaded_id(driver: Any, name: str) -> str:
    """The id of the listed checkpoint called `name` (the page shows the name the admin gave)."""
    def found(d: Any) -> str | None:
        for r in d.find_elements("css selector", "#ckpt-rows tr"):
            if r.find_element("css selector", "td strong").text == name:
                return str(r.get_attribute("data-id"))
        return None
    return str(wait_for(driver, found, 15, f"{name} is not listed"))


def answer_dialog(driver: Any, yes: bool) -> str:
    """Answer the page's confirmation dialog; returns its question."""
    wait_for(driver, lambda d: d.find_element("id", "confirm").get_attribute("open") is not None, 5,
             "no confirmation asked")
    question = text_of(driver, "confirm")
    driver.find_element("id", "confirm-ok" if yes else "confirm-cancel").click()
    wait_for(driver, lambda d: d.find_element("id", "confirm").get_attribute("open") is None, 5, "the dialog stays")
    return question


def record_changes(driver: Any, element_id: str) -> None:
    """Keep every value a progress bar (or any <progress> inside the element) and every text inside
    the element take, in window.seen, however briefly they last."""
    driver.execute_script("""
        const root = document.getElementById(arguments[0]);
        window.seen = {values: [], texts: []};
        const note = () => {
          for (const bar of root.matches("progress") ? [root] : root.querySelectorAll("progress")) {
            if (bar.hasAttribute("value")) window.seen.values.push(bar.value);
          }
          window.seen.texts.push(root.textContent);
        };
        new MutationObserver(note).observe(root.closest("form") || root,
          {subtree: true, attributes: true, childList: true, characterData: true});""", element_id)


def seen(driver: Any) -> dict[str, list[Any]]:
    return dict(driver.execute_script("return window.seen"))


def drop_file(driver: Any, zone_id: str, path: Path) -> None:
    """Drag `path` onto a drop zone as a file manager would (a DataTransfer holding a File)."""
    driver.execute_script("""
        const [zoneId, name, encoded] = arguments;
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "application/octet-stream"}));
        const zone = document.getElementById(zoneId);
        for (const type of ["dragenter", "dragover", "drop"]) {
          zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
        }""", zone_id, path.name, base64.b64encode(path.read_bytes()).decode())


def upload_on_page(driver: Any, name: str) -> None:
    field = driver.find_element("id", "ckpt-name")
    field.clear()
    field.send_keys(name)
    wait_for(driver, lambda d: d.find_element("id", "upload-submit").is_enabled(), 5, "upload stays disabled")
    driver.find_element("id", "upload-submit").click()


# ------------------------------------------------------------ checkpoints
def test_admin_uploads_sees_vetting_activates_and_deletes(stack: Stack, driver: Any, tmp_path: Path) -> None:
    open_admin(driver, stack)
    shipped = row(driver, "default")
    assert "shipped with the service" in shipped.find_element("css selector", '[data-field="not-deletable"]').text
    assert not shipped.find_elements("css selector", 'button[data-action="delete"]')

    # Not a checkpoint: the upload goes out with its progress shown, then the API's 415 is shown.
    bogus = tmp_path / "notes.safetensors"
    bogus.write_bytes(b"not a checkpoint\n" * (BOGUS_BYTES // 17))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": UPLOAD_THROTTLE_BYTES_S})
    record_changes(driver, "upload-progress-box")
    driver.find_element("id", "ckpt-file").send_keys(str(bogus))
    upload_on_page(driver, "bogus")
    wait_for(driver, lambda d: d.find_element("id", "upload-error").is_displayed(), 30, "no upload error shown")
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    error = text_of(driver, "upload-error")
    assert "415 unsupported_checkpoint" in error and "not a checkpoint" in error and ".pt/.pth" in error, error
    progress = seen(driver)
    partial = [v for v in progress["values"] if 0 < v < 1]
    assert partial, f"no upload progress between 0 and 1 was shown: {progress}"
    assert progress["values"] == sorted(progress["values"]), progress["values"]
    assert any("of 768 KB" in t and "%" in t for t in progress["texts"]), progress["texts"]
    assert "bogus" not in driver.find_element("id", "ckpt-rows").text

    # A real one with the file picker: listed at once, vetted, its figures as the API has them.
    picked = variant_checkpoint(tmp_path / "picked.safetensors", name="picked in the page")
    driver.find_element("id", "ckpt-file").send_keys(str(picked))
    upload_on_page(driver, "page upload")
    wait_for(driver, lambda d: "Uploaded picked.safetensors as ckpt_" in text_of(d, "upload-progress-text"), 30,
             f"no word of the upload: {text_of(driver, 'upload-error')}")
    assert driver.find_element("id", "upload-progress").get_attribute("value") == "1"
    picked_id = uploaded_id(driver, "page upload")
    assert wait_for_status(driver, picked_id, ("ready",)) == "ready"
    with api_client(stack) as client:
        record = wait_until_vetted(client, picked_id)
    vetting = record["vetting"]
    assert vetting["data"] == "cifar10.npz (shipped, 300 images)" and vetting["domain"] == "cifar10", vetting
    shown = row(driver, picked_id)
    for field in VETTING_FIELDS:
        assert shown.find_element("css selector", f'[data-field="{field}"]').text == f"{100 * vetting[field]:.1f}%"
    apgd = shown.find_element("css selector", '[data-field="apgd_acc"]').text
    assert apgd.startswith(f"{100 * vetting['apgd_acc']:.1f}%") if "apgd_acc" in vetting else apgd == "n/a", apgd
    assert shown.find_element("css selector", '[data-field="n"]').text.startswith(f"{vetting['n']} · ")
    assert record["sha256"][:12] in shown.text and picked_id in shown.text

    # Another by drag and drop, then deleted: asked first, cancelled, asked again, gone.
    dropped = variant_checkpoint(tmp_path / "dropped.safetensors", name="dropped in the page")
    drop_file(driver, "ckpt-drop", dropped)
    assert "dropped.safetensors" in text_of(driver, "ckpt-drop-text")
    upload_on_page(driver, "page drop")
    dropped_id = uploaded_id(driver, "page drop")
    wait_for_status(driver, dropped_id, ("ready",))
    row(driver, dropped_id).find_element("css selector", 'button[data-action="delete"]').click()
    assert "Delete page drop?" in answer_dialog(driver, yes=False)
    assert dropped_id in listed(driver)
    row(driver, dropped_id).find_element("css selector", 'button[data-action="delete"]').click()
    assert "cannot be undone" in answer_dialog(driver, yes=True)
    wait_for(driver, lambda d: dropped_id not in listed(d), 10, "the deleted checkpoint is still listed")
    assert "Deleted page drop." in text_of(driver, "admin-status")
    with api_client(stack) as client:
        assert dropped_id not in [r["id"] for r in client.get("v1/checkpoints").json()["checkpoints"]]

    # Activated: the only active one, which now says why it cannot be deleted.
    row(driver, picked_id).find_element("css selector", 'button[data-action="activate"]').click()
    wait_for(driver, lambda d: "Activated page upload." in text_of(d, "admin-status"), 15, "no word of the activation")
    active = row(driver, picked_id)
    assert active.get_attribute("data-status") == "active"
    assert "it is serving" in active.find_element("css selector", '[data-field="not-deletable"]').text
    assert len(driver.find_elements("css selector", '#ckpt-rows tr[data-status="active"]')) == 1
    with api_client(stack) as client:
        assert client.get("v1/checkpoints").json()["active"] == picked_id


HAS_UNVETTED = "unvetted" in typing.get_args(CheckpointStatus)


@pytest.mark.xfail(not HAS_UNVETTED, reason="needs the unvetted status of the vetting branch", strict=True)
def test_an_unvetted_checkpoint_activates_only_with_the_confirmed_override(
        stack: Stack, driver: Any, tmp_path: Path) -> None:
    with api_client(stack) as client:
        answer = client.post("v1/checkpoints", data={"name": "five classes"}, files={
            "file": ("five.safetensors", unvettable_checkpoint(tmp_path / "five.safetensors").read_bytes(),
                     "application/octet-stream")})
        assert answer.status_code == 202, answer.text
        checkpoint_id = answer.json()["id"]
        record = wait_until_vetted(client, checkpoint_id)
    assert record["status"] == "unvetted" and record["vetting"].get("skipped"), record

    open_admin(driver, stack)
    shown = row(driver, checkpoint_id)
    assert f"Not vetted: {record['vetting']['skipped']}" in shown.text
    assert not shown.find_elements("css selector", 'button[data-action="activate"]')
    shown.find_element("css selector", 'button[data-action="override"]').click()
    assert "without vetting" in answer_dialog(driver, yes=False)
    assert row(driver, checkpoint_id).get_attribute("data-status") == "unvetted"
    row(driver, checkpoint_id).find_element("css selector", 'button[data-action="override"]').click()
    answer_dialog(driver, yes=True)
    wait_for(driver, lambda d: "without vetting" in text_of(d, "admin-status"), 15, "no word of the override")
    assert wait_for_status(driver, checkpoint_id, ("active",), 10) == "active"
    assert "activated without vetting" in row(driver, checkpoint_id).find_element(
        "css selector", '[data-field="override"]').text
    with api_client(stack) as client:
        listing = client.get("v1/checkpoints").json()
        overridden = next(r for r in listing["checkpoints"] if r["id"] == checkpoint_id)
        assert listing["active"] == checkpoint_id and overridden["override"]["at"] > 0
        client.post("v1/checkpoints/default/activate").raise_for_status()  # serve the shipped model again


# --------------------------------------------------------------- training
def fill(driver: Any, element_id: str, value: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def test_admin_starts_a_training_run_and_follows_it_to_the_end(
        stack: Stack, driver: Any, cifar_mini: dict[str, np.ndarray]) -> None:
    from selenium.webdriver.support.ui import Select

    data_dir = stack.workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "page-small.npz", x=cifar_mini["x_train"][:160], y=cifar_mini["y_train"][:160])
    open_admin(driver, stack)
    Select(driver.find_element("id", "train-recipe")).select_by_value("natural")
    fill(driver, "train-data", "page-small.npz")
    fill(driver, "train-limit", "120")
    fill(driver, "train-name", "page trained")

    # Refused before it is sent (epochs), and by the API (eps over the server's limit).
    fill(driver, "train-epochs", "0")
    driver.find_element("id", "train-submit").click()
    assert "epochs: a whole number from 1 to 1000" in text_of(driver, "train-error")
    assert driver.find_element("id", "train-epochs").get_attribute("aria-invalid") == "true"
    fill(driver, "train-epochs", "2")
    fill(driver, "train-eps", "64/255")
    driver.find_element("id", "train-submit").click()
    wait_for(driver, lambda d: "422" in text_of(d, "train-error"), 10, "the API's refusal is not shown")
    assert "exceeds the linf limit" in text_of(driver, "train-error")
    assert not driver.find_elements("css selector", "#train-jobs li")

    # A run of two epochs on the fixture's images: queued, training, vetting, done.
    fill(driver, "train-eps", "")
    record_changes(driver, "train-jobs")
    driver.find_element("id", "train-submit").click()
    item = wait_for(driver, lambda d: by_css(d, "#train-jobs li"), 10, "the run is not listed")
    job_id = item.get_attribute("data-id")
    assert not driver.find_element("id", "train-error").is_displayed()
    wait_for(driver, lambda d: by_css(d, "#train-jobs li").get_attribute("data-status") in ("finished", "failed"),
             120, "the training run did not end")
    item = by_css(driver, "#train-jobs li")
    assert item.get_attribute("data-status") == "finished", f"{item.text}\n{stack.log_tail()}"
    assert item.find_element("css selector", "progress").get_attribute("value") == "1"
    assert item.find_element("css selector", ".train-text").text == "Done"
    progress = seen(driver)
    assert progress["values"] == sorted(progress["values"]) and progress["values"][-1] == 1, progress["values"]
    assert any("Queued" in t for t in progress["texts"]), progress["texts"]
    with api_client(stack) as client:
        job = client.get(f"v1/training-jobs/{job_id}").json()
    trained = job["result"]
    outcome = item.find_element("css selector", ".train-outcome").text
    assert f"({trained['id']}) is {trained['status']}" in outcome and "page trained" in outcome, outcome
    wait_for(driver, lambda d: trained["id"] in listed(d), 10, "the trained checkpoint is not listed")
    assert row(driver, trained["id"]).get_attribute("data-status") == trained["status"]
    full_page_screenshot(driver, ARTIFACTS / "admin-training.png")

    # The tab remembers the runs it started: after a reload, the outcome is shown again.
    driver.refresh()
    wait_for(driver, lambda d: by_css(d, f'#train-jobs li[data-id="{job_id}"]').get_attribute("data-status")
             == "finished", 15, "the run is not shown after a reload")
