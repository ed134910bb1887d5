"""Every dashboard route, called by tenant B with tenant A's names and ids, is a 404 page (or 403 for
the admin's pages) and changes nothing; B's lists show nothing of A's. A route added without a case
here fails `test_every_page_route_has_an_isolation_case`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import declared_routes
from tests.support.platform import QUICK_RECIPE, Platform, start_job, upload
from tests.ui.conftest import csrf_of, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

# (method, route, form) with A's values filled in; B must get a 404 page and A's state must not change.
TENANT_CALLS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/ui/adapters/{name}", {}),
    ("POST", "/ui/adapters/{name}/promote", {"version": "1", "alias": "production"}),
    ("POST", "/ui/adapters/{name}/aliases/{alias}/rollback", {}),
    ("GET", "/ui/adapters/{name}/versions/{version}", {}),
    ("GET", "/ui/adapters/{name}/versions/{version}/download", {}),
    ("GET", "/ui/adapters/{name}/versions/{version}/exports/{export_id}/download", {}),
    ("GET", "/ui/jobs/{job_id}", {}),
    ("GET", "/ui/jobs/{job_id}/stream", {}),
    ("POST", "/ui/jobs/{job_id}/cancel", {}),
    ("POST", "/ui/jobs", {"training_file": "{file_id}", "adapter": "stolen"}),
]
# Lists: A's names and ids must not appear on B's pages.
LIST_PAGES = ["/ui/adapters", "/ui/jobs", "/ui/files", "/ui/usage", "/ui/monitors"]
ADMIN_CALLS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/ui/admin", {}),
    ("POST", "/ui/admin/tenants", {"name": "intruder"}),
    ("GET", "/ui/admin/tenants/{tenant}", {}),
    ("POST", "/ui/admin/tenants/{tenant}/quotas", {"max_adapters": "1"}),
    ("POST", "/ui/admin/tenants/{tenant}/keys", {"name": "stolen"}),
    ("POST", "/ui/admin/tenants/{tenant}/keys/{key_id}/revoke", {}),
    ("POST", "/ui/admin/act", {"tenant": "{tenant}"}),
]
# Routes with no other tenant's id in them: signing in and out, the upload (B's own file), the root.
OWN_ROUTES = {
    ("GET", "/ui"),
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    ("POST", "/ui/files"),
}


def test_every_page_route_has_an_isolation_case(make_platform: Callable[..., Platform]) -> None:
    app = make_platform(serve_models=False).app
    declared = declared_routes(app, "/ui")
    covered = (
        {(m, p) for m, p, _ in TENANT_CALLS + ADMIN_CALLS} | {("GET", p) for p in LIST_PAGES} | OWN_ROUTES
    )
    assert declared == covered, (
        f"without a case: {declared - covered}; cases of no route: {covered - declared}"
    )


def test_tenant_b_sees_and_changes_nothing_of_tenant_a(
    make_platform: Callable[..., Platform], random_adapter: Path, qa_rows_file: Path
) -> None:
    platform = make_platform(serve_models=False, workers=0)
    a, b = platform.tenant("acme"), platform.tenant("globex")
    registry = platform.registry
    for _ in range(2):
        version = registry.adapters.register(a.id, "secret-adapter", random_adapter, base_model="tiny")
    registry.adapters.promote(a.id, "secret-adapter", "production", 1, actor="admin")
    registry.adapters.promote(a.id, "secret-adapter", "production", 2, actor="admin")
    export = registry.exports.create(a.id, version, format="gguf", quant="q8_0", target=None)
    file_id = upload(a.client, qa_rows_file).json()["id"]
    job = start_job(a.client, file_id, "secret-job", platform.app.state.settings.base_model, **QUICK_RECIPE)
    values = {
        "name": "secret-adapter",
        "alias": "production",
        "version": "2",
        "export_id": export.id,
        "job_id": job["id"],
        "file_id": file_id,
        "tenant": a.id,
        "key_id": registry.tenants.list_keys(a.id)[0].id,
    }
    before = (registry.adapters.aliases(a.id, "secret-adapter"), registry.jobs.get(a.id, job["id"]).status)

    browser = sign_in(platform.url, b.key)
    token = csrf_of(browser.get("/ui/files").text)
    for method, route, form in TENANT_CALLS + ADMIN_CALLS:
        path = route.format(**values)
        data = {k: v.format(**values) for k, v in form.items()} | {"csrf_token": token}
        answer = browser.request(method, path, data=data if method == "POST" else None)
        expected = 403 if route.startswith("/ui/admin") else 404
        assert answer.status_code == expected, (method, route, answer.status_code, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html")
    for page in LIST_PAGES:
        text = browser.get(page).text
        leaked = [
            v for k, v in values.items() if k in ("name", "job_id", "file_id", "export_id") and v in text
        ]
        assert not leaked, (page, leaked)
    after = (registry.adapters.aliases(a.id, "secret-adapter"), registry.jobs.get(a.id, job["id"]).status)
    assert after == before
    assert [t.name for t in registry.tenants.all()] == ["acme", "globex"]
    assert registry.tenants.list_keys(a.id)[0].revoked_at is None
    assert registry.jobs.all(b.id) == []
