"""Adaptation through a real uvicorn server: the policy routes, the monitor's figures on the API and
`/metrics`, and the controller's promotion and rollback changing the very next request while a request in
flight finishes on its version (the controller runs here in the test, on the server's registry)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lorafleet.rollout.controller import Controller, ControllerSettings
from lorafleet.serving.router import assignment_bucket
from tests.api.test_routing import error_of, register, served
from tests.support.platform import Platform, Tenant

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

POLICY = {
    "triggers": {"drift": {"p_value": 0.01, "window": 10}},
    "train": {"min_corrections": 5},
    "canary": {"percent": 50, "min_requests": 4, "max_minutes": 30},
}


def embed(prompts: Sequence[str]) -> np.ndarray:
    """Stand-in embeddings (the prompts' lengths): this test is about the loop, not the drift test."""
    return np.array([[len(p) / 10.0, 1.0] for p in prompts])


def controller(platform: Platform, tiny_dir: Path) -> Controller:
    settings = ControllerSettings(tick_seconds=0.1, settle_seconds=0.0, permutations=100)
    return Controller(platform.registry, base_model=str(tiny_dir), settings=settings, embed=embed)


def users_of(arm: str) -> list[str]:
    """Users inside (`canary`) or outside (`stable`) the 50% canary of `support`."""
    inside = [u for u in (f"user-{i}" for i in range(40)) if assignment_bucket("canary:support", u) < 50]
    outside = [u for u in (f"user-{i}" for i in range(40)) if assignment_bucket("canary:support", u) >= 50]
    return inside if arm == "canary" else outside


def score(platform: Platform, tenant: Tenant, user: str, value: float, count: int) -> None:
    """`count` completions of `support` for `user`, each scored `value`."""
    for _ in range(count):
        body = {"model": "support", "prompt": "q1", "max_tokens": 1, "temperature": 0, "user": user}
        answer = tenant.client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        rated = tenant.client.post(
            "/v1/feedback", json={"completion_id": answer.json()["id"], "score": value}
        )
        assert rated.status_code == 201, rated.text
    assert platform.app.state.request_log.flush(timeout=10)


def stream_then(tenant: Tenant, user: str, act: Callable[[], None]) -> list[dict[str, Any]]:
    """The chunks of a long stream for `user` during which `act()` runs."""
    long = {"model": "support", "prompt": "q1", "max_tokens": 300, "temperature": 0, "ignore_eos": True}
    with tenant.client.stream(
        "POST", "/v1/completions", json={**long, "stream": True, "user": user}
    ) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: {"))[6:])
        act()
        return [first, *(json.loads(line[6:]) for line in lines if line.startswith("data: {"))]


@sqlite_only
def test_the_controllers_promotion_applies_at_once_and_leaves_a_stream_on_its_version(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path)
    assert acme.client.put("/v1/adapters/support/policies/production", json=POLICY).status_code == 200
    loop = controller(platform, tiny_dir)
    loop.tick()
    acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 50})
    loop.tick()  # the canary set by hand is judged as the controller's own
    canary_user, stable_user = users_of("canary")[0], users_of("stable")[0]
    assert served(acme.client, "support", canary_user) == "support@2"
    score(platform, acme, canary_user, 1.0, 4)
    score(platform, acme, stable_user, 0.5, 4)

    def promote() -> None:
        loop.tick()
        assert served(acme.client, "support", stable_user) == "support@2"  # the very next request

    chunks = stream_then(acme, stable_user, promote)
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"support@1"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    rollout = acme.client.get("/v1/adapters/support/rollouts").json()["data"][0]
    assert rollout["state"] == "promoted" and rollout["trigger"]["kind"] == "canary"
    kinds = [e["kind"] for e in acme.client.get("/v1/adapters/support/events").json()["data"]]
    assert kinds[-3:] == ["triggered", "canary_cleared", "promoted"]


@sqlite_only
def test_the_controllers_rollback_applies_at_once_and_leaves_a_stream_on_its_version(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path)
    acme.client.put("/v1/adapters/support/policies/production", json=POLICY)
    loop = controller(platform, tiny_dir)
    acme.client.put("/v1/adapters/support/canary", json={"target": "support@2", "percent": 50})
    loop.tick()
    canary_user, stable_user = users_of("canary")[0], users_of("stable")[0]
    score(platform, acme, canary_user, 0.0, 4)
    score(platform, acme, stable_user, 1.0, 4)

    def roll_back() -> None:
        loop.tick()
        assert served(acme.client, "support", canary_user) == "support@1"

    chunks = stream_then(acme, canary_user, roll_back)
    assert {chunk["system_fingerprint"] for chunk in chunks} == {"support@2"}
    rollout = acme.client.get("/v1/adapters/support/rollouts").json()["data"][0]
    assert rollout["state"] == "rolled_back" and "worse than production" in rollout["outcome"]
    assert acme.client.get("/v1/adapters/support").json()["aliases"]["production"] == 1


@sqlite_only
def test_policy_routes_monitor_figures_and_metrics(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme, globex = platform.tenant("acme"), platform.tenant("globex")
    register(platform, acme, tiny_dir, tmp_path, versions=1)
    path = "/v1/adapters/support/policies/production"
    assert error_of(acme.client.get(path), 404)["message"] == (
        "adapter 'support' has no adaptation policy on alias 'production'"
    )
    bad = {**POLICY, "canary": {"percent": 150}}
    assert error_of(acme.client.put(path, json=bad), 400)["message"].startswith("policy.canary.percent")
    recipe = {**POLICY, "train": {"recipe": {"training": {"learning_rate": -1}}}}
    message = error_of(acme.client.put(path, json=recipe), 400)["message"]
    assert message.startswith("policy.train.recipe") and "training.learning_rate" in message
    other = {**POLICY, "alias": "staging"}
    assert "policy.alias" in error_of(acme.client.put(path, json=other), 400)["message"]
    assert globex.client.put(path, json=POLICY).status_code == 404  # another tenant's adapter

    answer = acme.client.put(path, json=POLICY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"]["canary"]["percent"] == 50 and answer.json()["status"] is None
    loop = controller(platform, tiny_dir)
    loop.tick()
    score(platform, acme, "someone", 0.75, 3)
    loop.tick()
    status = acme.client.get(path).json()["status"]
    assert status["state"] == "watching" and status["requests"] == 3 and status["quality"] == 0.75
    metrics = httpx.get(f"{platform.url}/metrics").text
    labels = f'adapter="support",alias="production",tenant="{acme.id}"'
    assert f"lorafleet_alias_requests{{{labels}}} 3.0" in metrics
    assert f"lorafleet_alias_quality{{{labels}}} 0.75" in metrics
    listed = acme.client.get("/v1/adapters/support/policies").json()["data"]
    assert [p["alias"] for p in listed] == ["production"]

    assert acme.client.delete(path).status_code == 200
    assert acme.client.get("/v1/adapters/support/policies").json()["data"] == []
    assert "lorafleet_alias_requests{" not in httpx.get(f"{platform.url}/metrics").text
    kinds = [e["kind"] for e in acme.client.get("/v1/adapters/support/events").json()["data"]]
    assert kinds == ["policy_set", "policy_cleared"]
