"""The adaptation controller on a real registry (SQLite): trigger → job → gate → canary → promote or roll
back, every step audited, and a controller that dies mid-rollout resumed by the next one.

The worker is played by the test (it claims the controller's job and registers a version), and prompts are
embedded by a stand-in that tells the drifted tickets apart, so each test runs in a moment.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lorafleet.registry import Registry
from lorafleet.registry.tables import AdapterVersion, LoggedCompletion, Rollout, new_id
from lorafleet.rollout.controller import Controller, ControllerSettings
from lorafleet.rollout.policy import AdaptationPolicy

TRAINING_PROMPTS = [f"Extract this ticket: my refund for order {i} is late" for i in range(40)]
DRIFTED_PROMPTS = [
    f"Extract this ticket: warranty claim on 0{i % 9 + 1}.03.2026 for serial {i}" for i in range(40)
]


def embed(prompts: Sequence[str]) -> np.ndarray:
    """Stand-in embeddings: whether the prompt is a warranty claim, plus a little seeded noise."""
    rows = []
    for prompt in prompts:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        noise = np.random.default_rng(seed).normal(0, 0.1, 3)
        rows.append([float("warranty" in prompt), *noise])
    return np.array(rows)


@dataclass
class World:
    registry: Registry
    tenant: str
    v1: AdapterVersion
    tmp: Path
    tokenizer: Any

    def controller(self) -> Controller:
        settings = ControllerSettings(tick_seconds=0.1, settle_seconds=0.0, permutations=200)
        return Controller(
            self.registry, base_model="tiny", settings=settings, embed=embed, tokenizer=self.tokenizer
        )

    def serve(
        self,
        version_id: str,
        prompts: Sequence[str],
        *,
        score: float | None = None,
        correct: bool = False,
        errors: int = 0,
    ) -> list[str]:
        """Log one completion per prompt served by `version_id` (the first `errors` failed), each with
        `score` and a correction when asked; their ids."""
        now = time.time()
        rows = [
            LoggedCompletion(
                id=new_id("chatcmpl"),
                tenant_id=self.tenant,
                model="support",
                adapter_version_id=version_id,
                messages=[{"role": "user", "content": prompt}],
                text='{"type": "refund"}',
                finish_reason="error" if i < errors else "stop",
                latency_ms=100.0 + i,
                created_at=now,
            )
            for i, prompt in enumerate(prompts)
        ]
        ids = [row.id for row in rows]
        self.registry.requests.add(rows)
        for completion_id in ids:
            if score is not None or correct:
                self.registry.requests.add_feedback(
                    self.tenant,
                    completion_id,
                    score=score,
                    correction='{"type": "warranty"}' if correct else None,
                )
        return ids

    def run_job(self, rollout: Rollout, *, succeed: bool = True) -> AdapterVersion | None:
        """Play the worker: claim the rollout's job and register its version (or fail it)."""
        job = self.registry.jobs.claim("test-worker")
        assert job is not None and job.id == rollout.job_id
        if not succeed:
            self.registry.jobs.finish(job.id, "test-worker", "failed", error="out of memory")
            return None
        folder = self.tmp / f"adapter-{job.id}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"r": 4}')
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        return self.registry.complete_job(
            job, "test-worker", folder, metrics={}, trained_tokens=10, compute_seconds=1.0
        )

    def rollout(self) -> Rollout:
        return self.registry.adaptation.rollouts(self.tenant, "support")[0]

    def events(self) -> list[str]:
        return [e.kind for e in self.registry.adapters.events(self.tenant, "support")]


POLICY = {
    "triggers": {"drift": {"p_value": 0.01, "window": 20}},
    "train": {"min_corrections": 5},
    "canary": {"percent": 50, "min_requests": 10, "max_minutes": 60},
}


@pytest.fixture
def world(tmp_path: Path, tiny_dir: Path) -> Iterator[World]:
    from lorafleet.models import load_tokenizer

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", artifacts_url=str(tmp_path / "artifacts"))
    tenant = registry.tenants.create("acme").id
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(f'{{"prompt": "{p}", "completion": "{{}}"}}\n' for p in TRAINING_PROMPTS))
    dataset = registry.datasets.add(
        tenant, rows, filename="train.jsonl", format="prompt_completion", rows=40, tokens=400
    )
    adapter = tmp_path / "v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"v1")
    v1 = registry.adapters.register(tenant, "support", adapter, base_model="tiny", dataset_id=dataset.id)
    registry.adapters.promote(tenant, "support", "production", 1, actor="test")
    registry.adaptation.set_policy(tenant, "support", AdaptationPolicy.parse(POLICY), actor="test")
    yield World(registry, tenant, v1, tmp_path, load_tokenizer(str(tiny_dir)))
    registry.close()


def _to_canary(world: World) -> tuple[Controller, AdapterVersion]:
    """Drive the loop from drift to a canary of a new version; the controller and that version."""
    controller = world.controller()
    controller.tick()  # starts watching
    world.serve(world.v1.id, DRIFTED_PROMPTS[:20], correct=True)
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "training"
    v2 = world.run_job(rollout)
    assert v2 is not None
    controller.tick()
    assert world.rollout().state == "canary"
    return controller, v2


def test_no_drift_no_trigger_then_drift_retrains_canaries_and_promotes(world: World) -> None:
    controller = world.controller()
    controller.tick()
    world.serve(world.v1.id, TRAINING_PROMPTS[:20], correct=True)
    controller.tick()
    status = world.registry.adaptation.policy(world.tenant, "support", "production").status
    assert status is not None and status["state"] == "watching" and status["windows_tested"] == 1
    assert status["drift_p_value"] > 0.01 and status["requests"] == 20
    assert world.registry.adaptation.rollouts(world.tenant, "support") == []

    world.serve(world.v1.id, DRIFTED_PROMPTS[:20], correct=True)
    controller.tick()
    rollout = world.rollout()
    assert rollout.trigger["kind"] == "drift" and rollout.trigger["p_value"] < 0.01
    assert rollout.state == "training" and rollout.from_version_id == world.v1.id
    job = world.registry.jobs.get(world.tenant, rollout.job_id or "")
    assert job.parent_version_id == world.v1.id and job.recipe["continual"]["strategy"] == "replay"
    corrections = world.registry.datasets.get(world.tenant, job.dataset_id)
    assert corrections.rows == 40  # both windows' corrections of v1's answers

    v2 = world.run_job(rollout)
    assert v2 is not None
    controller.tick()
    canary = world.registry.routing.canary(world.tenant, "support")
    assert canary is not None and canary.target_ref == "support@2" and canary.percent == 50
    assert world.rollout().state == "canary"

    world.serve(v2.id, DRIFTED_PROMPTS[:12], score=1.0)
    world.serve(world.v1.id, DRIFTED_PROMPTS[:12], score=0.4)
    controller.tick()
    assert world.rollout().state == "promoted"
    assert world.registry.adapters.resolve(world.tenant, "support").id == v2.id
    assert world.registry.routing.canary(world.tenant, "support") is None
    assert world.events() == [
        "policy_set",
        "triggered",
        "job_queued",
        "canary_set",
        "canary_started",
        "canary_cleared",
        "promoted",
    ]
    messages = [e.message for e in world.registry.jobs.events(world.tenant, job.id)]
    assert any("queued by the adaptation controller" in m for m in messages)
    assert any(m.startswith("promoted: support@2") for m in messages)
    moves = world.registry.adapters.history(world.tenant, "support", "production")
    assert moves[-1].actor == "controller" and moves[-1].to_version_id == v2.id


def test_a_worse_canary_is_rolled_back_and_production_stays(world: World) -> None:
    controller, v2 = _to_canary(world)
    world.serve(v2.id, DRIFTED_PROMPTS[:12], score=0.0)
    world.serve(world.v1.id, DRIFTED_PROMPTS[:12], score=1.0)
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "rolled_back" and "worse than production" in (rollout.outcome or "")
    assert world.registry.adapters.resolve(world.tenant, "support").id == world.v1.id
    assert world.registry.routing.canary(world.tenant, "support") is None
    assert world.events()[-2:] == ["canary_cleared", "rolled_back"]


def test_a_spike_of_canary_errors_rolls_back_at_once(world: World) -> None:
    controller, v2 = _to_canary(world)
    world.serve(v2.id, DRIFTED_PROMPTS[:3], errors=1)  # 1 of 3 failed, over the 2% the plan allows
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "rolled_back" and "failed" in (rollout.outcome or "")
    assert world.registry.adapters.resolve(world.tenant, "support").id == world.v1.id


def test_a_version_failing_the_gate_never_serves(world: World) -> None:
    policy = {**POLICY, "gate": {"max_general_drift": 0.1}}  # the new version has no drift score
    world.registry.adaptation.set_policy(
        world.tenant, "support", AdaptationPolicy.parse(policy), actor="test"
    )
    controller = world.controller()
    controller.tick()
    world.serve(world.v1.id, DRIFTED_PROMPTS[:20], correct=True)
    controller.tick()
    world.run_job(world.rollout())
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "rolled_back" and rollout.candidate_version_id is not None
    assert "canary_set" not in world.events() and world.events()[-1] == "gate_failed"
    assert world.registry.routing.canary(world.tenant, "support") is None


def test_a_failed_job_fails_the_rollout(world: World) -> None:
    controller = world.controller()
    controller.tick()
    world.serve(world.v1.id, DRIFTED_PROMPTS[:20], correct=True)
    controller.tick()
    world.run_job(world.rollout(), succeed=False)
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "failed" and "out of memory" in (rollout.outcome or "")


def test_too_few_corrections_wait(world: World) -> None:
    controller = world.controller()
    controller.tick()
    world.serve(world.v1.id, DRIFTED_PROMPTS[:20])  # drifted, but nobody corrected an answer
    controller.tick()
    assert world.rollout().state == "waiting" and world.rollout().job_id is None
    world.serve(world.v1.id, DRIFTED_PROMPTS[20:25], correct=True)
    controller.tick()
    assert world.rollout().state == "training"


def test_a_controller_that_died_after_promoting_is_finished_by_the_next(world: World) -> None:
    _, v2 = _to_canary(world)
    # the first controller moved the alias and died before clearing its canary
    world.registry.adapters.promote(world.tenant, "support", "production", v2.number, actor="controller")
    world.controller().tick()
    assert world.rollout().state == "promoted"
    assert world.registry.routing.canary(world.tenant, "support") is None
    assert world.registry.adapters.resolve(world.tenant, "support").id == v2.id


def test_a_controller_that_died_mid_canary_is_resumed_by_the_next(world: World) -> None:
    _, v2 = _to_canary(world)
    successor = world.controller()
    world.serve(v2.id, DRIFTED_PROMPTS[:12], score=0.0)
    world.serve(world.v1.id, DRIFTED_PROMPTS[:12], score=1.0)
    successor.tick()
    assert world.rollout().state == "rolled_back"
    assert world.registry.adapters.resolve(world.tenant, "support").id == world.v1.id


def test_a_canary_cleared_by_hand_ends_the_rollout_as_rolled_back(world: World) -> None:
    controller, _ = _to_canary(world)
    world.registry.routing.clear_canary(world.tenant, "support", actor="admin")
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "rolled_back" and "cleared" in (rollout.outcome or "")


def test_a_canary_set_by_hand_on_a_watched_alias_is_judged_and_rolled_back(world: World) -> None:
    from lorafleet.serving.router import Canary

    controller = world.controller()
    controller.tick()
    folder = world.tmp / "bad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"bad")
    bad = world.registry.adapters.register(world.tenant, "support", folder, base_model="tiny")
    canary = Canary(model="support", target_ref=f"support@{bad.number}", percent=20)
    world.registry.routing.set_canary(world.tenant, canary, actor="admin")
    controller.tick()
    rollout = world.rollout()
    assert rollout.state == "canary" and rollout.trigger["kind"] == "canary"
    assert rollout.candidate_version_id == bad.id and rollout.job_id is None
    world.serve(bad.id, TRAINING_PROMPTS[:6], score=0.0)
    world.serve(world.v1.id, TRAINING_PROMPTS[:6], score=1.0)
    controller.tick()
    assert world.rollout().state == "rolled_back"
    assert world.registry.routing.canary(world.tenant, "support") is None
    assert world.registry.adapters.resolve(world.tenant, "support").id == world.v1.id


def test_a_canary_set_by_hand_goes_before_a_rollout_waiting_for_corrections(world: World) -> None:
    from lorafleet.serving.router import Canary

    controller = world.controller()
    controller.tick()
    world.serve(world.v1.id, DRIFTED_PROMPTS[:20])  # drifted, not corrected: the rollout waits
    controller.tick()
    waiting = world.rollout()
    assert waiting.state == "waiting"
    folder = world.tmp / "v2"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    v2 = world.registry.adapters.register(world.tenant, "support", folder, base_model="tiny")
    canary = Canary(model="support", target_ref="support@2", percent=20)
    world.registry.routing.set_canary(world.tenant, canary, actor="admin")
    controller.tick()
    assert world.registry.adaptation.rollout(world.tenant, waiting.id).state == "failed"
    assert world.rollout().state == "canary" and world.rollout().candidate_version_id == v2.id
