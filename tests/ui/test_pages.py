"""The dashboard's pages over real HTTP (uvicorn on 127.0.0.1, no browser): sign-in, scoping, CSRF, paging."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.platform import ADMIN_KEY, Platform, upload
from tests.ui.conftest import csrf_of, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


@pytest.fixture
def platform(make_platform: Callable[..., Platform]) -> Platform:
    return make_platform(serve_models=False)


def _register(platform: Platform, tenant_id: str, name: str, source: Path, count: int) -> None:
    for _ in range(count):
        platform.registry.adapters.register(tenant_id, name, source, base_model="tiny")


def test_pages_need_a_session_and_sign_in_sends_you_back(platform: Platform) -> None:
    tenant = platform.tenant("acme")
    anonymous = httpx.Client(base_url=platform.url)
    answer = anonymous.get("/ui/jobs?after=x")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login?next=/ui/jobs%3Fafter%3Dx"

    form = anonymous.get("/ui/login?next=/ui/files")
    token = csrf_of(form.text)
    wrong = anonymous.post("/ui/login", data={"api_key": "sk-nope", "csrf_token": token, "next": "/ui/files"})
    assert wrong.status_code == 401 and "unknown API key" in wrong.text
    token = csrf_of(wrong.text)  # each form gets a fresh token
    right = anonymous.post(
        "/ui/login", data={"api_key": tenant.key, "csrf_token": token, "next": "/ui/files"}
    )
    assert right.status_code == 303 and right.headers["location"] == "/ui/files"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert tenant.key not in cookie  # the key itself never goes into the cookie
    page = anonymous.get("/ui/files")
    assert page.status_code == 200 and "tenant <strong>acme</strong>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")

    offsite = httpx.Client(base_url=platform.url)
    token = csrf_of(offsite.get("/ui/login").text)
    away = offsite.post(
        "/ui/login", data={"api_key": tenant.key, "csrf_token": token, "next": "//evil.test/x"}
    )
    assert away.headers["location"] == "/ui/adapters"


def test_forms_without_the_csrf_token_are_refused_and_change_nothing(
    platform: Platform, random_adapter: Path
) -> None:
    tenant = platform.tenant("acme")
    _register(platform, tenant.id, "support", random_adapter, 2)
    browser = sign_in(platform.url, tenant.key)
    for token in (None, "forged"):
        data = {"version": "2", "alias": "production"} | ({"csrf_token": token} if token else {})
        refused = browser.post("/ui/adapters/support/promote", data=data)
        assert refused.status_code == 403 and "CSRF token" in refused.text
    assert platform.registry.adapters.aliases(tenant.id, "support") == {}
    login_form = httpx.Client(base_url=platform.url)
    stale = login_form.post("/ui/login", data={"api_key": tenant.key, "csrf_token": "x", "next": ""})
    assert stale.status_code == 403 and "lorafleet_session" not in stale.headers.get("set-cookie", "")

    token = csrf_of(browser.get("/ui/adapters/support").text)
    moved = browser.post(
        "/ui/adapters/support/promote", data={"version": "2", "alias": "production", "csrf_token": token}
    )
    assert moved.status_code == 303
    assert platform.registry.adapters.aliases(tenant.id, "support") == {"production": 2}
    assert platform.registry.adapters.history(tenant.id, "support")[-1].actor.startswith("key:")


def test_another_tenants_pages_are_404_pages(platform: Platform, random_adapter: Path) -> None:
    owner, other = platform.tenant("acme"), platform.tenant("globex")
    _register(platform, owner.id, "secret-adapter", random_adapter, 1)
    spy = sign_in(platform.url, other.key)
    for path in (
        "/ui/adapters/secret-adapter",
        "/ui/adapters/secret-adapter/versions/1",
        "/ui/adapters/secret-adapter/versions/1/download",
    ):
        answer = spy.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html") and "Not found" in answer.text
    assert "secret-adapter" not in spy.get("/ui/adapters").text
    token = csrf_of(spy.get("/ui/adapters").text)
    answer = spy.post("/ui/adapters/secret-adapter/promote", data={"version": "1", "csrf_token": token})
    assert answer.status_code == 404
    assert platform.registry.adapters.aliases(owner.id, "secret-adapter") == {}
    assert spy.get("/ui/admin").status_code == 403


def test_every_page_renders_and_lists_are_paged(
    platform: Platform, random_adapter: Path, qa_rows_file: Path
) -> None:
    tenant = platform.tenant("acme")
    for index in range(53):
        _register(platform, tenant.id, f"a{index:03d}", random_adapter, 1)
    _register(platform, tenant.id, "a000", random_adapter, 55)
    assert upload(tenant.client, qa_rows_file).status_code == 201
    browser = sign_in(platform.url, tenant.key)

    first = browser.get("/ui/adapters")
    names = re.findall(r'href="/ui/adapters/(a\d{3})"', first.text)
    assert names == [f"a{i:03d}" for i in range(50)]
    assert 'href="/ui/adapters?after=a049"' in first.text
    second = browser.get("/ui/adapters?after=a049")
    assert re.findall(r'href="/ui/adapters/(a\d{3})"', second.text) == ["a050", "a051", "a052"]
    assert "Next page" not in second.text

    adapter = browser.get("/ui/adapters/a000")
    assert adapter.status_code == 200 and 'href="/ui/adapters/a000?after=50"' in adapter.text
    assert "v51" in browser.get("/ui/adapters/a000?after=50").text
    for path in ("/ui/adapters/a000/versions/3", "/ui/jobs", "/ui/files", "/ui/usage", "/ui/monitors"):
        answer = browser.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        assert "<script" not in answer.text.split("</head>")[1].replace('<script type="application/json"', "")
    assert "train.jsonl" in browser.get("/ui/files").text
    assert browser.get("/ui/adapters?after=" + "x" * 65).status_code == 400
    token = csrf_of(browser.get("/ui/jobs").text)
    huge = browser.post("/ui/jobs", data={"csrf_token": token, "adapter": "a", "recipe": "{" * 2_000_000})
    assert huge.status_code == 400 and huge.headers["content-type"].startswith("text/html")
    assert "maximum size" in huge.text and platform.registry.jobs.all(tenant.id) == []


def test_a_bad_upload_names_the_line_and_stores_nothing(platform: Platform, tmp_path: Path) -> None:
    tenant = platform.tenant("acme")
    browser = sign_in(platform.url, tenant.key)
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    token = csrf_of(browser.get("/ui/files").text)
    answer = browser.post(
        "/ui/files",
        data={"csrf_token": token, "purpose": "fine-tune"},
        files={"file": ("rows.jsonl", bad.read_bytes())},
    )
    assert answer.status_code == 400 and "rows.jsonl:2: missing" in answer.text, re.findall(
        "alert.>(.*)<", answer.text
    )
    assert platform.registry.datasets.all(tenant.id) == []


def test_the_upload_form_scrubs_when_ticked(platform: Platform) -> None:
    tenant = platform.tenant("acme")
    browser = sign_in(platform.url, tenant.key)
    row = b'{"prompt": "Patient Ingmar Solveigsdottir, call 617-555-0134.", "completion": "ok"}\n'
    token = csrf_of(browser.get("/ui/files").text)
    answer = browser.post(
        "/ui/files",
        data={"csrf_token": token, "purpose": "fine-tune", "scrub": "on"},
        files={"file": ("notes.jsonl", row)},
    )
    assert answer.status_code == 303, answer.text
    (dataset,) = platform.registry.datasets.all(tenant.id)
    stored = platform.registry.datasets.local_path(dataset).read_text()
    assert "Solveigsdottir" not in stored and "617-555-0134" not in stored
    report = platform.registry.datasets.scrub_report(dataset)
    assert report is not None and report["rows"] == 1


def test_revoking_a_key_ends_its_sessions(platform: Platform) -> None:
    tenant = platform.tenant("acme")
    browser = sign_in(platform.url, tenant.key)
    assert browser.get("/ui/adapters").status_code == 200
    key_id = platform.registry.tenants.list_keys(tenant.id)[0].id
    platform.admin.delete(f"/v1/tenants/{tenant.id}/keys/{key_id}").raise_for_status()
    assert browser.get("/ui/adapters").status_code == 303


def test_the_admin_manages_tenants_quotas_and_keys(platform: Platform) -> None:
    admin = sign_in(platform.url, ADMIN_KEY)
    page = admin.get("/ui/admin")
    assert page.status_code == 200
    made = admin.post("/ui/admin/tenants", data={"name": "initech", "csrf_token": csrf_of(page.text)})
    assert made.status_code == 303
    tenant_page = made.headers["location"]
    tenant_id = tenant_page.rsplit("/", 1)[1]
    form: dict[str, Any] = {"csrf_token": csrf_of(admin.get(tenant_page).text), "max_adapters": "7"}
    assert admin.post(f"{tenant_page}/quotas", data=form).status_code == 303
    assert platform.registry.tenants.get(tenant_id).max_adapters == 7
    form["max_adapters"] = "-1"
    bad = admin.post(f"{tenant_page}/quotas", data=form)
    assert bad.status_code == 400 and "max_adapters" in bad.text
    assert platform.registry.tenants.get(tenant_id).max_adapters == 7
    keyed = admin.post(f"{tenant_page}/keys", data={"name": "ci", "csrf_token": form["csrf_token"]})
    secret = re.search(r'<code id="new-key">([^<]+)</code>', keyed.text)
    assert secret is not None
    assert sign_in(platform.url, secret.group(1)).get("/ui/adapters").status_code == 200


def test_a_versions_page_shows_its_lineage_forgetting_and_gate_report(
    platform: Platform, random_adapter: Path
) -> None:
    tenant = platform.tenant("acme")
    registry = platform.registry
    parent = None
    for score in (0.9, 0.7):
        metrics = {"evaluation": {"suites": {"tickets-v1": {"score": score}}, "general": {"drift": 0.01}}}
        parent = registry.adapters.register(
            tenant.id,
            "support",
            random_adapter,
            base_model="tiny",
            metrics=metrics,
            parent_version_id=parent.id if parent else None,
        )
    tenant.client.put(
        "/v1/adapters/support/gate", json={"policy": {"max_forgetting": 0.1}}
    ).raise_for_status()
    browser = sign_in(platform.url, tenant.key)
    token = csrf_of(browser.get("/ui/adapters/support").text)
    form = {"version": "2", "alias": "production", "csrf_token": token}
    refused = browser.post("/ui/adapters/support/promote", data=form)
    assert refused.status_code == 409 and "gate" in refused.text.lower()
    assert registry.adapters.aliases(tenant.id, "support") == {}
    assert browser.post("/ui/adapters/support/promote", data=form | {"force": "on"}).status_code == 303

    page = browser.get("/ui/adapters/support/versions/2").text
    assert "support@1 → support@2" in page
    matrix = re.search(r'<table id="forgetting-matrix">(.*?)</table>', page, re.S)
    assert matrix is not None and "tickets-v1" in matrix.group(1)
    assert re.findall(r"<td>(0\.\d+)</td>", matrix.group(1)) == ["0.9", "0.7"]
    assert "forgetting on tickets-v1</th><td>0.2</td>" in page
    gate = re.search(
        r"<caption>Promotion to production on [^<]*: refused \(forced\)</caption>(.*?)</table>", page, re.S
    )
    assert gate is not None and "forgetting" in gate.group(1) and "<td>no</td>" in gate.group(1)
