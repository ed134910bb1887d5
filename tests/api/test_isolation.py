"""Tenant isolation through a real server: another tenant's ids and names are "not found" on every route.

Tenant A owns a file, a queued job, and an adapter with two versions, a `production` alias, a canary,
an experiment, an adaptation policy and a stored export of version 1. Tenant B
calls every tenant route with A's ids and names and gets 404 (never 200, 403, 409 or 500, and never A's
data); B's lists hold none of A's items; A's resources are unchanged afterwards. `FOREIGN_CALLS` has one
line per route call and `LISTS` one per list route: a test checks that together they cover every /v1 route
but the admin's, so a new route fails it until it has an isolation case. Then the keys: a missing, unknown
or revoked key is a 401, a tenant key on an admin route and the admin key without `X-Lorafleet-Tenant` on a
tenant route are 403s, and the admin naming a tenant in that header acts for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lorafleet.api.auth import TENANT_HEADER
from tests.helpers import declared_routes, save_random_adapter, write_jsonl
from tests.support.platform import ADMIN_KEY, QA_ROWS, QUICK_RECIPE, Platform, Tenant, upload

pytestmark = pytest.mark.integration

Call = tuple[str, str, dict[str, Any] | None]  # method, the app's path template (+ a query), JSON body

MODELS = ("{name}", "{name}@1", "{name}:production")  # every way `model` can name an adapter
JOB = {"model": "{base}", "recipe": QUICK_RECIPE}
EXPERIMENT = {"model": "{name}", "arms": [{"target": "{name}@1", "percent": 100}]}
POLICY = {"triggers": {"drift": {"p_value": 0.01, "window": 50}}, "canary": {"percent": 10}}
_INTERVAL = {"mean": 0.5, "low": 0.4, "high": 0.6}
FAIRNESS_REPORT: dict[str, Any] = {  # a valid report, so a foreign version answers 404, not 400
    "metric": "json_fields",
    "rows": 2,
    "skipped_rows": 0,
    "interval": 0.95,
    "groups": {"a": _INTERVAL, "b": _INTERVAL},
    "baseline": {"a": {"gap": _INTERVAL, "similarity": _INTERVAL}},
    "baseline_gap": 0.0,
    "pairs": [{"a": "a", "b": "b", "gap": _INTERVAL, "similarity": _INTERVAL, "significant": False}],
    "max_gap": 0.0,
    "max_significant_gap": 0.0,
}
FOREIGN_CALLS: list[Call] = [
    ("GET", "/v1/files?after={file_id}", None),
    ("GET", "/v1/files/{file_id}", None),
    ("GET", "/v1/files/{file_id}/content", None),
    ("GET", "/v1/files/{file_id}/scrub_report", None),
    ("DELETE", "/v1/files/{file_id}", None),
    ("POST", "/v1/fine_tuning/jobs", {**JOB, "training_file": "{file_id}"}),
    ("POST", "/v1/fine_tuning/jobs", {**JOB, "training_file": "{own_file}", "validation_file": "{file_id}"}),
    ("GET", "/v1/fine_tuning/jobs?after={job_id}", None),
    ("GET", "/v1/fine_tuning/jobs/{job_id}", None),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events", None),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", None),
    ("GET", "/v1/adapters/{name}", None),
    ("GET", "/v1/adapters/{name}/versions", None),
    ("GET", "/v1/adapters/{name}/versions/{version}", None),
    ("GET", "/v1/adapters/{name}/versions/{version}/download", None),
    ("DELETE", "/v1/adapters/{name}/versions/{version}", None),
    ("POST", "/v1/adapters/{name}/aliases/{alias}", {"version": 1}),
    ("POST", "/v1/adapters/{name}/aliases/{alias}/rollback", None),
    ("GET", "/v1/adapters/{name}/history", None),
    ("DELETE", "/v1/adapters/{name}", None),
    ("POST", "/v1/adapters/{name}/suites", {"file": "{eval_file}", "metric": "exact_match"}),
    ("GET", "/v1/adapters/{name}/suites", None),
    ("DELETE", "/v1/adapters/{name}/suites/{suite_id}", None),
    ("PUT", "/v1/adapters/{name}/gate", {"policy": {"max_forgetting": 0.1}}),
    ("GET", "/v1/adapters/{name}/gate", None),
    ("GET", "/v1/adapters/{name}/versions/{version}/gate", None),
    ("GET", "/v1/adapters/{name}/versions/{version}/card", None),
    ("PUT", "/v1/adapters/{name}/versions/{version}/fairness", FAIRNESS_REPORT),
    ("GET", "/v1/adapters/{name}/canary", None),
    ("PUT", "/v1/adapters/{name}/canary", {"target": "{name}@1", "percent": 10}),
    ("DELETE", "/v1/adapters/{name}/canary", None),
    ("GET", "/v1/adapters/{name}/events", None),
    ("PUT", "/v1/adapters/{name}/policies/{alias}", POLICY),
    ("GET", "/v1/adapters/{name}/policies/{alias}", None),
    ("DELETE", "/v1/adapters/{name}/policies/{alias}", None),
    ("GET", "/v1/adapters/{name}/policies", None),
    ("GET", "/v1/adapters/{name}/rollouts", None),
    ("POST", "/v1/adapters/{name}/versions/{version}/exports", {"format": "gguf"}),
    ("GET", "/v1/adapters/{name}/versions/{version}/exports", None),
    ("GET", "/v1/adapters/{name}/versions/{version}/exports/{export_id}", None),
    ("GET", "/v1/adapters/{name}/versions/{version}/exports/{export_id}/download", None),
    ("PUT", "/v1/experiments/{experiment}", EXPERIMENT),
    ("DELETE", "/v1/experiments/{experiment}", None),
    ("POST", "/v1/fine_tuning/jobs", {**JOB, "training_file": "{own_file}", "parent": "{name}@1"}),
    ("GET", "/v1/models/{model}", None),  # the other forms of `model`: tests/api/test_openai_parity.py
    *[("POST", "/v1/completions", {"model": m, "prompt": "q1", "max_tokens": 2}) for m in MODELS],
    *[
        ("POST", "/v1/chat/completions", {"model": m, "messages": [{"role": "user", "content": "q1"}]})
        for m in MODELS
    ],
    ("POST", "/v1/feedback", {"completion_id": "{completion_id}", "score": 1.0}),
    ("GET", "/v1/feedback?after={feedback_id}", None),
    ("POST", "/v1/feedback/corrections/export", {"adapter": "{name}"}),
]
# List routes: what B's answer must not contain of A's (each gets the ids of A's resources and B's answer).
LISTS: dict[str, Callable[[dict[str, str], dict[str, Any]], list[str]]] = {
    "/v1/files": lambda a, answer: [f["id"] for f in answer["data"] if f["id"] == a["file_id"]],
    "/v1/fine_tuning/jobs": lambda a, answer: [j["id"] for j in answer["data"] if j["id"] == a["job_id"]],
    "/v1/adapters": lambda a, answer: [x["name"] for x in answer["data"] if x["name"] == a["name"]],
    "/v1/models": lambda a, answer: [m["id"] for m in answer["data"] if m["id"].startswith(a["name"])],
    "/v1/feedback": lambda a, answer: [f["id"] for f in answer["data"] if f["id"] == a["feedback_id"]],
    "/v1/experiments": lambda a, answer: [e["name"] for e in answer["data"]],  # B has none
    "/v1/usage": lambda a, answer: [
        f"{day['date']}: {day['prompt_tokens']} prompt tokens"
        for day in answer["data"]
        if day["prompt_tokens"]
    ],  # B served nothing; A did
}
# Routes that take no id of another tenant; each has its own check in the test.
OWN_CALLS = {("POST", "/v1/files"): "B's upload is listed for B, never for A"}
# The admin's routes: a tenant key gets 403 on each.
ADMIN_CALLS: list[Call] = [
    ("POST", "/v1/tenants", {"name": "intruder"}),
    ("GET", "/v1/tenants", None),
    ("GET", "/v1/tenants/{tenant}", None),
    ("PATCH", "/v1/tenants/{tenant}", {"log_text": False}),
    ("PATCH", "/v1/tenants/{tenant}/quotas", {"max_adapters": 100}),
    ("POST", "/v1/tenants/{tenant}/keys", {"name": "stolen"}),
    ("GET", "/v1/tenants/{tenant}/keys", None),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}", None),
]


def fill(template: Any, values: dict[str, str]) -> Any:
    """`template` (a string, or a body of dicts and lists) with `{placeholders}` taken from `values`."""
    if isinstance(template, str):
        return template.format(**values)
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, values) for value in template]
    return template


def call(client: httpx.Client, spec: Call, values: dict[str, str]) -> httpx.Response:
    method, path, body = spec
    return client.request(method, fill(path, values), json=fill(body, values))


def is_error(answer: httpx.Response) -> bool:
    """An answer in OpenAI's error shape `{"error": {"message": ...}}`."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return False
    body = answer.json()
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


def test_every_tenant_route_has_an_isolation_case(tmp_path: Path, tiny_dir: Path) -> None:
    from lorafleet.api.app import create_app
    from lorafleet.api.settings import ServerSettings

    app = create_app(
        ServerSettings(
            database_url=f"sqlite:///{tmp_path / 'registry.db'}",
            artifacts_url=str(tmp_path / "artifacts"),
            base_model=str(tiny_dir),
            serve_models=False,
            workers=0,
        )
    )
    try:
        tenant_routes = declared_routes(app, "/v1/") - declared_routes(app, "/v1/tenants")
        covered = {(method, path.partition("?")[0]) for method, path, _ in FOREIGN_CALLS}
        covered |= {("GET", path) for path in LISTS} | set(OWN_CALLS)
        assert not tenant_routes - covered, f"routes without an isolation case: {tenant_routes - covered}"
        assert not covered - tenant_routes, f"isolation cases of no route: {covered - tenant_routes}"
        admin_covered = {(method, path) for method, path, _ in ADMIN_CALLS}
        assert admin_covered == declared_routes(app, "/v1/tenants")
    finally:
        app.state.registry.close()


def owned_resources(
    platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path
) -> tuple[dict[str, str], list[str]]:
    """A's file, queued job (no workers run it), adapter `support` with v1, v2, production → v2, an eval
    suite, a canary, an experiment, an adaptation policy, and a completion with a correction: the values
    of the calls' placeholders, and strings only A's own answers may contain."""
    from lorafleet.models import load_base

    client = tenant.client
    uploaded = upload(client, write_jsonl(tmp_path / "acme-secret.jsonl", QA_ROWS), scrub=True)  # + a report
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    body = {"model": str(tiny_dir), "training_file": file["id"], "adapter": "queued", "recipe": QUICK_RECIPE}
    job = client.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    base, _ = load_base(str(tiny_dir), device="cpu")
    versions = [
        platform.registry.adapters.register(
            tenant.id,
            "support",
            save_random_adapter(base, tmp_path / f"adapter-{seed}", seed=seed),
            base_model=str(tiny_dir),
        )
        for seed in (1, 2)
    ]
    for version in (1, 2):  # two promotions, so A could roll back: B's rollback must fail on isolation alone
        promoted = client.post("/v1/adapters/support/aliases/production", json={"version": version})
        assert promoted.status_code == 200, promoted.text
    held_out = upload(client, write_jsonl(tmp_path / "acme-held-out.jsonl", QA_ROWS[:4]), purpose="eval")
    assert held_out.status_code == 201, held_out.text
    suite = client.post(
        "/v1/adapters/support/suites", json={"file": held_out.json()["id"], "metric": "exact_match"}
    )
    assert suite.status_code == 201, suite.text
    canary = client.put("/v1/adapters/support/canary", json={"target": "support@1", "percent": 10})
    assert canary.status_code == 200, canary.text
    arms = [{"target": "support@1", "percent": 50}, {"target": "support@2", "percent": 50}]
    experiment = client.put("/v1/experiments/acme-trial", json={"model": "support:production", "arms": arms})
    assert experiment.status_code == 200, experiment.text
    policy = client.put("/v1/adapters/support/policies/production", json=POLICY)
    assert policy.status_code == 200, policy.text
    messages = [{"role": "user", "content": "q1"}]
    completion = client.post("/v1/chat/completions", json={"model": "support", "messages": messages})
    assert completion.status_code == 200, completion.text
    body = {"completion_id": completion.json()["id"], "correction": "acme-correction"}
    feedback = client.post("/v1/feedback", json=body)
    assert feedback.status_code == 201, feedback.text
    folder = tmp_path / "acme-export"  # an export a worker stored for version 1 (its files and report)
    folder.mkdir()
    (folder / "support-q8_0.gguf").write_bytes(b"GGUF acme-export")
    (folder / "export.json").write_text(json.dumps({"adapter": "support", "note": "acme-export"}))
    export = platform.registry.exports.create(
        tenant.id, versions[0], format="gguf", quant="q8_0", target=None
    )
    platform.registry.exports.succeed(export.id, folder)
    values = {
        "tenant_id": tenant.id,
        "file_id": file["id"],
        "eval_file": held_out.json()["id"],
        "suite_id": suite.json()["id"],
        "job_id": job.json()["id"],
        "name": "support",
        "version": "1",
        "alias": "production",
        "model": "support:production",
        "base": str(tiny_dir),
        "completion_id": completion.json()["id"],
        "feedback_id": feedback.json()["id"],
        "experiment": "acme-trial",
        "export_id": export.id,
    }
    secrets = [
        "acme-correction",
        tenant.id,
        file["sha256"],
        "acme-secret",
        "acme-held-out",
        "acme-export",
        export.id,
        suite.json()["id"],
        *(v.id for v in versions),
        *(v.sha256 for v in versions),
    ]
    return values, secrets


def snapshot(client: httpx.Client, a: dict[str, str]) -> dict[str, Any]:
    """What A sees of its resources (to compare before and after B's attempts)."""
    adapter = client.get(f"/v1/adapters/{a['name']}").json()
    return {
        "file": client.get(f"/v1/files/{a['file_id']}").json(),
        "content": client.get(f"/v1/files/{a['file_id']}/content").content,
        "job": client.get(f"/v1/fine_tuning/jobs/{a['job_id']}").json()["status"],
        "versions": [(v["version"], v["sha256"]) for v in adapter["versions"]],
        "aliases": adapter["aliases"],
        "history": client.get(f"/v1/adapters/{a['name']}/history").json()["data"],
        "suites": client.get(f"/v1/adapters/{a['name']}/suites").json()["data"],
        "feedback": client.get("/v1/feedback").json()["data"],
        "canary": client.get(f"/v1/adapters/{a['name']}/canary").json(),
        "experiments": client.get("/v1/experiments").json()["data"],
        "events": client.get(f"/v1/adapters/{a['name']}/events").json()["data"],
        "policies": client.get(f"/v1/adapters/{a['name']}/policies").json()["data"],
        "exports": client.get(f"/v1/adapters/{a['name']}/versions/1/exports").json()["data"],
    }


def test_another_tenants_resources_are_not_found(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme, rival = platform.tenant("acme"), platform.tenant("rival")
    a, secrets = owned_resources(platform, acme, tiny_dir, tmp_path)
    mine = upload(rival.client, write_jsonl(tmp_path / "rival.jsonl", QA_ROWS[:4])).json()
    a["own_file"] = mine["id"]  # B's own file, to pair with A's in one job
    # A itself gets 200 on every read and inference call, so the ids and model names are right.
    for spec in FOREIGN_CALLS:
        if spec[0] == "GET" or "completions" in spec[1]:
            answer = call(acme.client, spec, a)
            assert answer.status_code == 200, (spec, answer.text)
    before = snapshot(acme.client, a)

    wrong = []
    for spec in FOREIGN_CALLS:
        answer = call(rival.client, spec, a)
        leaked = [secret for secret in secrets if secret in answer.text]
        if answer.status_code != 404 or not is_error(answer) or leaked:
            wrong.append(f"{spec[0]} {fill(spec[1], a)}: {answer.status_code} {answer.text[:200]}")
    assert not wrong, "\n".join(wrong)

    for path, leaks in LISTS.items():
        answer = rival.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert leaks(a, answer.json()) == [], (path, answer.text)
        assert not [secret for secret in secrets if secret in answer.text], (path, answer.text)
    assert [f["id"] for f in rival.client.get("/v1/files").json()["data"]] == [mine["id"]]
    assert [f["id"] for f in acme.client.get("/v1/files").json()["data"]] == [a["file_id"], a["eval_file"]]
    assert rival.client.get("/v1/usage").json()["tenant_id"] == rival.id

    assert snapshot(acme.client, a) == before
    assert before["job"] == "queued" and before["aliases"] == {"production": 2}
    assert [f["correction"] for f in before["feedback"]] == ["acme-correction"]
    assert [v for v, _ in before["versions"]] == [1, 2]
    assert before["canary"]["target"] == "support@1" and before["experiments"][0]["name"] == "acme-trial"
    assert [p["alias"] for p in before["policies"]] == ["production"]
    assert [(e["status"], e["report"]["note"]) for e in before["exports"]] == [("succeeded", "acme-export")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # key checks are not database logic
def test_keys_and_the_admin_scope(make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    file = upload(acme.client, write_jsonl(tmp_path / "train.jsonl", QA_ROWS)).json()

    for client in (platform.client(), platform.client("lf-not-a-key"), platform.client(ADMIN_KEY[:-1])):
        answer = client.get("/v1/files")
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["type"] == "authentication_error"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    created = platform.admin.post(f"/v1/tenants/{acme.id}/keys", json={"name": "leaving"}).json()
    leaving = platform.client(created["key"])
    assert leaving.get("/v1/files").status_code == 200
    revoked = platform.admin.delete(f"/v1/tenants/{acme.id}/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert leaving.get("/v1/files").status_code == 401
    assert acme.client.get("/v1/files").status_code == 200  # the tenant's other key still works

    values = {"tenant": acme.id, "key_id": created["id"]}
    for spec in ADMIN_CALLS:
        answer = call(acme.client, spec, values)
        assert answer.status_code == 403, (spec, answer.text)
        assert answer.json()["error"]["type"] == "permission_error"
    tenants = platform.admin.get("/v1/tenants").json()["data"]
    assert [t["name"] for t in tenants] == ["acme"]  # nothing was made

    anything = dict.fromkeys(
        (
            "file_id",
            "own_file",
            "eval_file",
            "suite_id",
            "job_id",
            "name",
            "version",
            "alias",
            "model",
            "base",
            "completion_id",
            "feedback_id",
            "experiment",
            "export_id",
        ),
        "x",
    )
    for spec in [*FOREIGN_CALLS, *(("GET", path, None) for path in LISTS)]:
        answer = call(platform.admin, spec, anything)  # refused before any id is looked up
        assert answer.status_code == 403, (spec, answer.text)
    with (tmp_path / "train.jsonl").open("rb") as handle:
        answer = platform.admin.post(
            "/v1/files", files={"file": ("a.jsonl", handle)}, data={"purpose": "fine-tune"}
        )
    assert answer.status_code == 403, answer.text

    acting = platform.client(ADMIN_KEY, **{TENANT_HEADER: acme.id})
    assert [f["id"] for f in acting.get("/v1/files").json()["data"]] == [file["id"]]
    by_name = platform.client(ADMIN_KEY, **{TENANT_HEADER: "acme"})
    assert by_name.get(f"/v1/files/{file['id']}").json()["sha256"] == file["sha256"]
    chat = {"model": platform.app.state.settings.base_model, "messages": [{"role": "user", "content": "hi"}]}
    answered = acting.post("/v1/chat/completions", json={**chat, "max_tokens": 2})
    assert answered.status_code == 200, answered.text
    usage = acme.client.get("/v1/usage").json()["data"]
    assert sum(day["requests"] for day in usage) == 1  # metered to the tenant the admin acted for
    unknown = platform.client(ADMIN_KEY, **{TENANT_HEADER: "nobody"})
    assert unknown.get("/v1/files").status_code == 404
