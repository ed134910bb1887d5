"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real
`lorafleet serve` process on 127.0.0.1 with the tiny model: sign in, upload, start a job and watch its
loss curve grow, see the version, promote, roll back, sign out; a second tenant sees 404 pages; a form
posted without its CSRF token is refused. Every page is saved as a screenshot (under
$LORAFLEET_SCREENSHOTS when set, for the README; else the test's temporary folder)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import write_jsonl
from tests.support.chromium import LAUNCH_ARGS, install_chromium
from tests.support.platform import ADMIN_KEY, QA_ROWS
from tests.support.server import free_port, run_server_process

pytestmark = pytest.mark.integration
RECIPE = {
    "data": {"max_length": 64},
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
    "training": {"batch_size": 4, "max_steps": 400, "learning_rate": 1e-2, "warmup_ratio": 0},
}


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("ui-home")
    port = free_port()
    env = {
        **os.environ,
        "LORAFLEET_HOME": str(home),
        "LORAFLEET_WORKER__POLL_SECONDS": "0.2",
        "LORAFLEET_WORKER__HEARTBEAT_SECONDS": "0.3",
        "LORAFLEET_ADAPTATION": "false",
    }
    argv = [
        sys.executable,
        "-m",
        "lorafleet",
        "serve",
        "--model",
        str(tiny_dir),
        "--port",
        str(port),
        "--admin-key",
        ADMIN_KEY,
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    with run_server_process(argv, env=env, ready_url=f"{url}/healthz", timeout=120):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = install_chromium()
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(executable), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LORAFLEET_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tenant(url: str, name: str) -> str:
    """A tenant made through the admin API; its new key."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        tenant = admin.post("/v1/tenants", json={"name": name})
        assert tenant.status_code == 201, tenant.text
        key: str = admin.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={"name": "ui"}).json()["key"]
        return key


def _wait_for(page: Any, expression: str, *, above: int, seconds: float = 120.0) -> int:
    """Poll `expression` in the page until it is above `above` (the page's CSP forbids Playwright's
    in-page polling, which evaluates strings); its value."""
    for _ in range(int(seconds / 0.1)):
        value = int(page.evaluate(expression))
        if value > above:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"{expression} stayed at {value} (not above {above}) for {seconds:g} s")


def _sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/ui")
    assert page.url.startswith(f"{url}/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/ui/**")
    assert "/ui/login" not in page.url


def test_a_tenant_trains_watches_promotes_and_rolls_back_in_the_browser(
    server: str, browser: Any, shots: Path, tmp_path: Path
) -> None:
    key, other_key = _tenant(server, "acme"), _tenant(server, "globex")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server}/ui/login")
    page.screenshot(path=shots / "signin.png")
    _sign_in(page, server, key)

    # upload a file (a bad one first: the page names its line and nothing is stored)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    page.goto(f"{server}/ui/files")
    page.get_by_label("Rows").set_input_files(bad)
    page.get_by_role("button", name="Upload").click()
    assert "bad.jsonl:2" in page.get_by_role("alert").inner_text()
    rows = write_jsonl(tmp_path / "train.jsonl", QA_ROWS)
    page.get_by_label("Rows").set_input_files(rows)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_selector("#files >> text=train.jsonl")
    assert page.locator("#files tbody tr").count() == 1
    page.screenshot(path=shots / "files.png", full_page=True)

    # start a job and watch the curve gain points over the live stream before the job ends
    page.goto(f"{server}/ui/jobs")
    page.get_by_label("Adapter name").fill("support")
    page.get_by_label("Recipe fields as JSON").fill(json.dumps(RECIPE))
    page.get_by_role("button", name="Start on").click()
    page.wait_for_url(f"{server}/ui/jobs/ftjob*")
    page.evaluate("window.__sameLoad = true")  # gone if the page reloads: the points below came live
    first = _wait_for(page, "Number(document.getElementById('loss-chart').dataset.points)", above=0)
    _wait_for(
        page,
        "window.__sameLoad ? Number(document.getElementById('loss-chart').dataset.points) : -1",
        above=first,
    )
    page.screenshot(path=shots / "job-running.png", full_page=True)
    # a second version, queued through the API, for the rollback below
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}) as api:
        file_id = api.get("/v1/files").json()["data"][0]["id"]
        quick = {**RECIPE, "training": {**RECIPE["training"], "max_steps": 4}}
        body = {"model": "x", "training_file": file_id, "adapter": "support", "recipe": quick}
        body["model"] = api.get("/v1/models").json()["data"][0]["id"]
        assert api.post("/v1/fine_tuning/jobs", json=body).status_code == 200
    page.wait_for_selector("#job-version", timeout=180_000)  # the page reloads when the stream ends
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert int(page.locator("#loss-count").inner_text()) >= 400
    page.screenshot(path=shots / "job.png", full_page=True)
    page.locator("#job-version").click()
    page.wait_for_url(f"{server}/ui/adapters/support/versions/1")
    page.screenshot(path=shots / "version.png", full_page=True)

    # promote v1, then v2, roll back to v1
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}) as api:
        for _ in range(600):
            if api.get("/v1/adapters/support").json().get("latest_version") == 2:
                break
            page.wait_for_timeout(200)
    page.goto(f"{server}/ui/adapters/support")
    page.get_by_role("button", name="Promote v1 to production").click()
    page.wait_for_selector("#aliases >> text=v1")
    page.get_by_role("button", name="Promote v2 to production").click()
    page.wait_for_selector("#aliases >> text=v2")
    page.get_by_role("button", name="Roll back production").click()
    page.wait_for_selector("#aliases >> text=v1")
    assert page.locator("#history tbody tr").first.inner_text().split("\t")[2] == "rollback"
    page.screenshot(path=shots / "adapter.png", full_page=True)
    page.goto(f"{server}/ui/adapters")
    page.screenshot(path=shots / "adapters.png", full_page=True)
    for name in ("jobs", "usage", "monitors"):
        page.goto(f"{server}/ui/{name}")
        page.screenshot(path=shots / f"{name}.png", full_page=True)

    # a form posted without its CSRF token is refused (the browser's own cookie goes with it)
    refused = page.request.post(
        f"{server}/ui/adapters/support/promote", form={"version": "2", "alias": "production"}
    )
    assert refused.status == 403 and "CSRF" in refused.text()
    page.goto(f"{server}/ui/adapters/support")
    assert page.locator("#aliases tbody tr").first.inner_text().split("\t")[:2] == ["production", "v1"]

    # another tenant sees none of it
    stranger = browser.new_context().new_page()
    _sign_in(stranger, server, other_key)
    for path in (
        "/ui/adapters/support",
        "/ui/adapters/support/versions/1",
        f"{page.url.replace(server, '')}",
    ):
        answer = stranger.goto(f"{server}{path}")
        assert answer is not None and answer.status == 404, path
    stranger.screenshot(path=shots / "not-found.png")
    assert "support" not in stranger.goto(f"{server}/ui/adapters").text()

    # the admin's pages
    admin = browser.new_context().new_page()
    _sign_in(admin, server, ADMIN_KEY)
    assert admin.url == f"{server}/ui/admin"
    admin.screenshot(path=shots / "admin.png", full_page=True)

    # sign out: the session is gone
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server}/ui/login")
    page.goto(f"{server}/ui/adapters")
    assert page.url.startswith(f"{server}/ui/login")


def test_pages_read_without_javascript_and_by_keyboard(server: str, browser: Any) -> None:
    key = _tenant(server, "nojs")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    _sign_in(page, server, key)
    page.goto(f"{server}/ui/files")
    assert page.get_by_role("heading", name="Files", exact=True).is_visible()
    assert page.get_by_label("Purpose").is_visible()  # every control has a label a screen reader reads

    keyboard = browser.new_context().new_page()
    _sign_in(keyboard, server, key)
    keyboard.keyboard.press("Tab")
    assert keyboard.evaluate("document.activeElement.textContent") == "Skip to content"
    keyboard.keyboard.press("Enter")
    keyboard.keyboard.press("Tab")
    assert keyboard.evaluate("document.activeElement.closest('main') !== null")


def test_next_page_appends_the_rows_in_place(server: str, browser: Any, tmp_path: Path) -> None:
    key = _tenant(server, "paged")
    rows = write_jsonl(tmp_path / "rows.jsonl", QA_ROWS[:2])
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}) as api:
        for _ in range(52):
            with rows.open("rb") as handle:
                answer = api.post(
                    "/v1/files", files={"file": ("rows.jsonl", handle)}, data={"purpose": "eval"}
                )
            assert answer.status_code == 201, answer.text
    page = browser.new_context().new_page()
    _sign_in(page, server, key)
    page.goto(f"{server}/ui/files")
    assert page.locator("#files tbody tr").count() == 50
    page.get_by_role("link", name="Next page").click()
    _wait_for(page, "document.querySelectorAll('#files tbody tr').length", above=50)
    assert page.locator("#files tbody tr").count() == 52 and page.url == f"{server}/ui/files"
    assert page.get_by_role("link", name="Next page").count() == 0
