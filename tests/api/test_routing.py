"""The router in the server, through a real uvicorn server: every completion's `model` and `user` (else its
API key) go through the tenant's canaries and experiments; the split is sticky and matches its shares
within binomial bounds; the response (`system_fingerprint`, every chunk, `X-Lorafleet-Version`) and the
request log name the version that served it; a promotion or a rollback changes the very next request
while a request in flight finishes on its version; canaries and experiments are set, shown, cleared and
audited through the API."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from scipy.stats import binom

from lorafleet.registry.tables import LoggedCompletion
from lorafleet.serving.router import assignment_bucket
from tests.helpers import save_random_adapter
from tests.support.platform import ADMIN_KEY, Platform, Tenant

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

USERS = [f"user-{i}" for i in range(400)]
CONFIDENCE = 0.999  # the binomial bounds' coverage: a correct router fails a bound once in 1000 seeds


def register(
    platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path, versions: int = 2
) -> list[str]:
    """Versions 1..`versions` of `support` (different random adapters), production → v1; their ids."""
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    ids = []
    for seed in range(1, versions + 1):
        adapter = save_random_adapter(base, tmp_path / f"support-{tenant.name}-{seed}", seed=seed)
        version = platform.registry.adapters.register(tenant.id, "support", adapter, base_model=str(tiny_dir))
        ids.append(version.id)
    assert tenant.client.post("/v1/adapters/support/aliases/production", json={"version": 1}).is_success
    return ids


def complete(client: httpx.Client, model: str, user: str | None = None, **fields: Any) -> httpx.Response:
    body = {"model": model, "prompt": "q1", "max_tokens": 1, "temperature": 0, **fields}
    if user is not None:
        body["user"] = user
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer


def served(client: httpx.Client, model: str, user: str | None = None) -> str:
    """The version that served one completion, as the body and the header both name it."""
    answer = complete(client, model, user)
    assert answer.headers["X-Lorafleet-Version"] == answer.json()["system_fingerprint"]
    version: str = answer.json()["system_fingerprint"]
    return version


def served_each(client: httpx.Client, model: str, users: list[str]) -> dict[str, str]:
    """User → the version that served them, four requests at a time (the engine batches them)."""
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(users, pool.map(lambda user: served(client, model, user), users), strict=True))


def within_binomial_bounds(count: int, n: int, percent: float) -> tuple[float, float]:
    low, high = binom.interval(CONFIDENCE, n, percent / 100)
    assert low <= count <= high, f"{count} of {n} is outside [{low}, {high}] for {percent}%"
    return low, high


def logged(platform: Platform, tenant: Tenant, completion_id: str) -> LoggedCompletion:
    assert platform.app.state.request_log.flush(timeout=10)
    row: LoggedCompletion = platform.registry.requests.get(tenant.id, completion_id)
    return row


def error_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    return error


# --- the split ---------------------------------------------------------------------------------------------


@sqlite_only
def test_the_split_is_sticky_and_matches_its_shares_within_binomial_bounds(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path, versions=3)
    canary = acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 30})
    assert canary.status_code == 200, canary.text

    first = served_each(acme.client, "support", USERS)
    assert set(first.values()) == {"support@1", "support@2"}
    in_canary = {user for user, version in first.items() if version == "support@2"}
    assert in_canary == {u for u in USERS if assignment_bucket("canary:support", u) < 30}
    within_binomial_bounds(len(in_canary), len(USERS), 30)
    assert served_each(acme.client, "support", USERS[:80]) == {u: first[u] for u in USERS[:80]}  # sticky
    assert {served(acme.client, "support@3", user) for user in USERS[:20]} == {"support@3"}  # pinned

    arms = [{"target": f"support@{n}", "percent": p} for n, p in ((1, 50), (2, 30), (3, 20))]
    trial = acme.client.put("/v1/experiments/trial", json={"model": "support:production", "arms": arms})
    assert trial.status_code == 200, trial.text
    by_user = served_each(acme.client, "support:production", USERS)
    shares = Counter(by_user.values())
    for arm in arms:
        within_binomial_bounds(shares[arm["target"]], len(USERS), arm["percent"])
    assert sum(shares.values()) == len(USERS)
    again = served_each(acme.client, "support:production", USERS[:80])
    assert again == {u: by_user[u] for u in USERS[:80]}  # sticky
    # the canary splits `support` only: its users are not moved by the experiment on the alias
    assert served_each(acme.client, "support", USERS[:80]) == {u: first[u] for u in USERS[:80]}


@sqlite_only
def test_without_a_user_the_api_key_decides(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path)
    acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 50})

    for index in range(12):
        key = platform.admin.post(f"/v1/tenants/{acme.id}/keys", json={"name": f"k{index}"}).json()
        client = platform.client(key["key"])
        expected = (
            "support@2" if assignment_bucket("canary:support", f"key:{key['id']}") < 50 else "support@1"
        )
        assert [served(client, "support") for _ in range(3)] == [expected] * 3


# --- what the response and the log record -------------------------------------------------------------------


@sqlite_only
def test_the_response_chunks_header_and_log_name_the_served_version(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    v1, v2 = register(platform, acme, tiny_dir, tmp_path)
    acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 100})

    chat = acme.client.post(
        "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["system_fingerprint"] == chat.headers["X-Lorafleet-Version"] == "support@2"
    row = logged(platform, acme, chat.json()["id"])
    assert (row.model, row.adapter_version_id, row.version, row.route) == (
        "support",
        v2,
        "support@2",
        "canary",
    )

    body = {"model": "support@1", "prompt": "q1", "max_tokens": 4, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with acme.client.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.headers["X-Lorafleet-Version"] == "support@1"
        chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"support@1"}
    row = logged(platform, acme, chunks[0]["id"])
    assert (row.adapter_version_id, row.version, row.route) == (v1, "support@1", "explicit")

    base = complete(acme.client, str(tiny_dir))
    assert base.json()["system_fingerprint"] == base.headers["X-Lorafleet-Version"] == str(tiny_dir)
    row = logged(platform, acme, base.json()["id"])
    assert (row.adapter_version_id, row.version, row.route) == (None, str(tiny_dir), "base")
    alias = complete(acme.client, "support:production")
    assert logged(platform, acme, alias.json()["id"]).route == "alias"


@sqlite_only
def test_a_promotion_and_a_rollback_apply_at_once_and_leave_requests_in_flight_on_their_version(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    v1, _ = register(platform, acme, tiny_dir, tmp_path)
    engine = platform.app.state.inference.engine
    assert served(acme.client, "support") == "support@1"

    long = {"model": "support", "prompt": "q1", "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    with acme.client.stream("POST", "/v1/completions", json={**long, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: {"))[6:])
        promoted = acme.client.post("/v1/adapters/support/aliases/production", json={"version": 2})
        assert promoted.status_code == 200, promoted.text
        assert engine.stats()["running"] >= 1  # the stream is still generating
        assert served(acme.client, "support") == "support@2"  # the very next request
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    chunks = [first, *rest]
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"support@1"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    row = logged(platform, acme, first["id"])
    assert (row.adapter_version_id, row.version, row.completion_tokens) == (v1, "support@1", 400)
    pinned = complete(acme.client, "support@1", max_tokens=400, ignore_eos=True)
    assert row.text == pinned.json()["choices"][0]["text"]  # v1's weights served it to the end

    rolled = acme.client.post("/v1/adapters/support/aliases/production/rollback")
    assert rolled.status_code == 200, rolled.text
    assert served(acme.client, "support") == "support@1"

    acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 100})
    assert served(acme.client, "support") == "support@2"  # a canary applies at once too
    acme.client.delete("/v1/adapters/support/canary")
    assert served(acme.client, "support") == "support@1"


# --- the canary and experiment routes ----------------------------------------------------------------------


def test_canary_set_show_clear_and_audit(make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    for seed in (1, 2):
        folder = tmp_path / f"v{seed}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        platform.registry.adapters.register(acme.id, "support", folder, base_model="tiny")
    key_id = platform.registry.tenants.authenticate(acme.key).id

    assert error_of(acme.client.get("/v1/adapters/support/canary"), 404)["message"].startswith(
        "adapter 'support' has no canary on 'support'"
    )
    answer = acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 10})
    assert answer.status_code == 200, answer.text
    expected = {"object": "adapter.canary", "adapter": "support", "model": "support", "target": "support@2"}
    assert answer.json() == {**expected, "percent": 10.0}
    assert acme.client.get("/v1/adapters/support/canary").json() == answer.json()
    acme.client.put("/v1/adapters/support/canary", json={"target": "support@1", "percent": 25})
    on_alias = {"target": "support@2", "percent": 5, "model": "support:production"}
    assert (
        acme.client.put("/v1/adapters/support/canary", json=on_alias).json()["model"] == "support:production"
    )
    shown = acme.client.get("/v1/adapters/support/canary", params={"model": "support:production"})
    assert shown.json()["percent"] == 5.0
    admin = platform.client(ADMIN_KEY, **{"X-Lorafleet-Tenant": acme.id})

    cleared = admin.delete("/v1/adapters/support/canary")
    assert cleared.status_code == 200 and cleared.json()["target"] == "support@1"
    error_of(acme.client.get("/v1/adapters/support/canary"), 404)
    error_of(acme.client.delete("/v1/adapters/support/canary"), 404)

    events = acme.client.get("/v1/adapters/support/events").json()["data"]
    assert [(e["kind"], e["actor"], e["detail"].get("target_ref")) for e in events] == [
        ("canary_set", f"key:{key_id}", "support@2"),
        ("canary_set", f"key:{key_id}", "support@1"),
        ("canary_set", f"key:{key_id}", "support@2"),
        ("canary_cleared", "admin", "support@1"),
    ]
    later = acme.client.get("/v1/adapters/support/events", params={"since_id": events[1]["id"]}).json()
    assert [e["id"] for e in later["data"]] == [e["id"] for e in events[2:]]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"target": "support@9", "percent": 10}, 404, None),
        ({"target": "nope@1", "percent": 10}, 404, None),
        ({"target": "support@1", "percent": 120}, 400, "percent"),
        ({"target": "support@1", "percent": -1}, 400, "percent"),
        ({"target": "support@1"}, 400, "percent"),
        ({"target": "a b", "percent": 10}, 400, "target"),
        ({"target": "support@1", "percent": 10, "model": "other"}, 400, "model"),
        ({"target": "support@1", "percent": 10, "model": "support:a:b"}, 400, "model"),
    ],
)
@sqlite_only
def test_bad_canaries_are_refused_naming_the_field(
    make_platform: Callable[..., Platform],
    tmp_path: Path,
    body: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    platform.registry.adapters.register(acme.id, "support", folder, base_model="tiny")

    error = error_of(acme.client.put("/v1/adapters/support/canary", json=body), status)
    if param is not None:
        assert error["param"] == param and param in error["message"]
    else:
        assert body["target"] in error["message"]
    assert acme.client.get("/v1/adapters/support/events").json()["data"] == []


def test_experiments_set_list_clear_and_another_tenants_adapters_are_not_found(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False)
    acme, globex = platform.tenant("acme"), platform.tenant("globex")
    for seed in (1, 2):
        folder = tmp_path / f"v{seed}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        platform.registry.adapters.register(acme.id, "support", folder, base_model="tiny")
    arms = [{"target": "support@1", "percent": 60}, {"target": "support@2", "percent": 40}]

    answer = acme.client.put("/v1/experiments/trial", json={"model": "support", "arms": arms})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"object": "experiment", "name": "trial", "model": "support", "arms": arms}
    assert acme.client.get("/v1/experiments").json()["data"] == [answer.json()]
    rival = acme.client.put("/v1/experiments/rival", json={"model": "support", "arms": arms})
    assert "experiment 'trial' already splits 'support'" in error_of(rival, 409)["message"]
    uneven = acme.client.put("/v1/experiments/x", json={"model": "support", "arms": arms[:1]})
    assert error_of(uneven, 400)["param"] == "arms"
    assert (
        error_of(acme.client.put("/v1/experiments/a b", json={"model": "support", "arms": arms}), 400)[
            "param"
        ]
        == "experiment"
    )
    unknown_arm = [arms[0], {"target": "support:staging", "percent": 40}]
    missing = acme.client.put("/v1/experiments/x", json={"model": "support", "arms": unknown_arm})
    assert "arms.1.target 'support:staging'" in error_of(missing, 404)["message"]

    assert globex.client.get("/v1/experiments").json()["data"] == []
    error_of(globex.client.put("/v1/experiments/trial", json={"model": "support", "arms": arms}), 404)
    error_of(globex.client.delete("/v1/experiments/trial"), 404)
    error_of(
        globex.client.put("/v1/adapters/support/canary", json={"target": "support@1", "percent": 5}), 404
    )
    error_of(globex.client.get("/v1/adapters/support/canary"), 404)
    error_of(globex.client.get("/v1/adapters/support/events"), 404)

    cleared = acme.client.delete("/v1/experiments/trial")
    assert cleared.status_code == 200 and cleared.json()["name"] == "trial"
    assert acme.client.get("/v1/experiments").json()["data"] == []
    error_of(acme.client.delete("/v1/experiments/trial"), 404)
    kinds = [e["kind"] for e in acme.client.get("/v1/adapters/support/events").json()["data"]]
    assert kinds == ["experiment_set", "experiment_cleared"]
