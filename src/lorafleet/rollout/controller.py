"""The adaptation controller: the loop that keeps a served alias good by itself, run by the worker process.

Every `tick_seconds`, for each adaptation policy (`rollout.policy`, kept by `registry.adaptation`):

    watch     the alias's monitor (`monitoring.AliasMonitor`) takes what its version served since the last
              tick, from the request log: each prompt's embedding (the base model's mean-pooled hidden
              states, `monitoring.embed`), latency, error, the validator's verdict; and the feedback scores
              given on it. The drift reference is the training prompts of the version and of its
              ancestors (a continual version learned both), embedded alike.
    trigger   a full window whose MMD p-value is below `triggers.drift.p_value`, or a rolling quality below
              `triggers.quality.below` → a rollout starts (event `triggered`); a canary someone set on the
              alias's users starts one too, straight at the canary step
    waiting   until the version has `train.min_corrections` corrections; they become a fine-tune file and
              a continual job from the version is queued (`job_queued`)
    training  until the job ends; failed or cancelled → the rollout failed (`job_failed`)
    gate      the new version against the policy's `gate` (or the adapter's own); failing, it is rolled
              back at once and never serves anyone (`gate_failed`)
    canary    `canary.percent` of the alias's users (the router's sticky canary) get it (`canary_started`);
              each tick `rollout.canary.decide` compares its feedback scores and errors with production's
              over the same span → promote: the alias moves, then the canary is cleared (`promoted`); or
              roll back: the canary is cleared (`rolled_back`)

Every step is an event in the adapter's history and, once there is a job, on the job's event stream.
The rollout's state is in the registry and each step starts from what is already true, so a controller
that died mid-way resumes when run again: a canary already set is watched, an alias already moved is
finished as promoted, a canary found cleared is finished as rolled back. The monitor lives in memory:
a restarted controller starts its windows afresh.

A canary on alias `production` samples the requests that name the adapter alone (`support`, which means
production); on any other alias, those naming it (`support:staging`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lorafleet.errors import GateRefusedError, LorafleetError, NotFoundError, UnknownAdapterError
from lorafleet.evaluation.gate import summary
from lorafleet.monitoring.drift import DriftReport
from lorafleet.monitoring.monitor import AliasMonitor
from lorafleet.monitoring.quality import json_schema_validator
from lorafleet.monitoring.requests import store_corrections
from lorafleet.registry import Registry
from lorafleet.registry.adaptation import CONTROLLER, WatchedAlias
from lorafleet.registry.tables import (
    FINISHED_STATES,
    ROLLOUT_ACTIVE,
    AdapterVersion,
    LoggedCompletion,
    Rollout,
)
from lorafleet.rollout.canary import Window, decide
from lorafleet.serving.router import Canary, parse_reference

logger = logging.getLogger(__name__)
Embed = Callable[[Sequence[str]], np.ndarray]  # prompts → (n, d) embeddings
SERVED_PER_TICK = 10_000  # requests an alias's monitor takes from the log in one tick (the rest: next tick)


class ControllerSettings(BaseModel):
    """How often the controller looks, and how it builds its drift reference."""

    model_config = ConfigDict(extra="forbid")

    tick_seconds: float = Field(
        5.0, gt=0, le=3600, description="The controller looks at every alias this often."
    )
    settle_seconds: float = Field(
        2.0, ge=0, le=60, description="Requests logged more recently wait a tick (the log is written behind)."
    )
    reference_rows: int = Field(
        256,
        ge=10,
        le=100_000,
        description="Training prompts of the version (and its ancestors) embedded as the drift reference.",
    )
    permutations: int = Field(500, ge=50, le=100_000, description="Permutations of each MMD test.")


@dataclass
class _Watch:
    """The monitor of one watched alias's current version, and how far the request log was read."""

    version_id: str
    monitor: AliasMonitor
    validator: Callable[[str], bool] | None
    until: float  # requests and feedback logged up to here are in the monitor
    reports: list[DriftReport] = field(default_factory=list)  # windows tested in the last look
    note: str | None = None  # what the monitor cannot do for this version


class Controller:
    """Trigger → job → gate → canary → promote or roll back, for every adaptation policy (module docstring).

    `embed` turns prompts into embeddings (default: the base model `base_model`, loaded on first use);
    `tokenizer` counts the tokens of a corrections file (default: the base model's).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        base_model: str,
        settings: ControllerSettings | None = None,
        embed: Embed | None = None,
        tokenizer: Any = None,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.base_model = base_model
        self.settings = settings or ControllerSettings()
        self.say = say or logger.info
        self.clock = clock
        self.stopping = threading.Event()
        self._embed = embed
        self._tokenizer = tokenizer
        self._watches: dict[int, _Watch] = {}

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        """`tick()` every `tick_seconds` until `stop()`; an unexpected error is logged; the loop goes on."""
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("adaptation controller: error in a tick")
            self.stopping.wait(self.settings.tick_seconds)

    def stop(self) -> None:
        self.stopping.set()

    def tick(self) -> None:
        """Look at every watched alias once: feed its monitor, then start or move its rollout one step."""
        watched = self.registry.adaptation.watched()
        for gone in set(self._watches) - {w.policy_id for w in watched}:
            del self._watches[gone]
        for alias in watched:
            try:
                status = self._step(alias)
            except LorafleetError as err:  # a bad version, file or job of one tenant stops only its alias
                logger.warning("adaptation of %s:%s: %s", alias.adapter, alias.alias, err)
                status = {"state": "error", "error": str(err)}
            self.registry.adaptation.set_status(alias.policy_id, status)

    def _step(self, alias: WatchedAlias) -> dict[str, Any]:
        try:
            version = self.registry.adapters.resolve(alias.tenant_id, alias.adapter, alias=alias.alias)
        except UnknownAdapterError:
            return {"state": "idle", "note": f"alias {alias.alias!r} points at no version yet"}
        watch = self._watch(alias, version)
        self._feed(alias, watch)
        rollout = self.registry.adaptation.active(alias)
        if rollout is None or rollout.state == "waiting":  # a canary set by hand goes before a wait
            rollout = self._canary_set_by_hand(alias, version, waiting=rollout) or rollout
        if rollout is None:
            trigger = self._trigger(alias, watch)
            if trigger is not None:
                self.say(f"{alias.adapter}:{alias.alias}: {trigger['why']}")
                rollout = self.registry.adaptation.start(alias, trigger=trigger, from_version_id=version.id)
        if rollout is not None:
            rollout = self._advance(alias, rollout)
            if rollout.state not in ROLLOUT_ACTIVE:
                self._watches.pop(alias.policy_id, None)  # a new trigger needs new evidence
        return _status(watch, rollout)

    # --- watching -----------------------------------------------------------------------------------------

    def _watch(self, alias: WatchedAlias, version: AdapterVersion) -> _Watch:
        """The alias's monitor, made afresh when the alias points at another version than last time."""
        watch = self._watches.get(alias.policy_id)
        if watch is not None and watch.version_id == version.id:
            return watch
        policy = alias.policy
        drift, quality = policy.triggers.drift, policy.triggers.quality
        monitor = AliasMonitor(
            self._reference(alias, version) if drift is not None else None,
            window=drift.window if drift is not None else 100,
            quality_window=quality.window if quality is not None else 100,
            alpha=drift.p_value if drift is not None else 0.05,
            permutations=self.settings.permutations,
        )
        validator = json_schema_validator(policy.validator) if policy.validator is not None else None
        watch = _Watch(version.id, monitor, validator, until=self.clock() - self.settings.settle_seconds)
        if drift is not None and monitor.reference is None:
            watch.note = (
                f"{alias.adapter}@{version.number} keeps no training file: its input drift is not tested"
            )
        self._watches[alias.policy_id] = watch
        return watch

    def _reference(self, alias: WatchedAlias, version: AdapterVersion) -> np.ndarray | None:
        """Embeddings of `reference_rows` training prompts of `version`: those of its own file and of each
        ancestor's (a continual version learned both: its rows, and its parent's through replay), an equal
        share from each file, spread over it. None when one of them keeps no file (a version registered
        by hand): its input drift cannot be tested."""
        from lorafleet.data import read_examples

        files = list(
            dict.fromkeys(
                v.dataset_id for v in self.registry.adapters.lineage_chain(alias.tenant_id, version.id)
            )
        )
        if None in files:
            return None
        prompts: list[str] = []
        for file_id in files:
            dataset = self.registry.datasets.get(alias.tenant_id, str(file_id))
            examples = read_examples(self.registry.datasets.local_path(dataset)).examples
            asked = [
                _asked([(m.role, m.content) for m in e.prompt_messages]) or e.text or "" for e in examples
            ]
            prompts += reference_prompts(asked, self.settings.reference_rows // len(files))
        return self.embed(prompts)

    def _feed(self, alias: WatchedAlias, watch: _Watch) -> None:
        """Give the monitor what the version served, and the scores given on it, since the last tick; the
        windows this completed are in `watch.reports` until the next."""
        watch.reports = []
        until = self.clock() - self.settings.settle_seconds
        served = self.registry.requests.served(
            alias.tenant_id, watch.version_id, after=watch.until, until=until, limit=SERVED_PER_TICK
        )
        if len(served) == SERVED_PER_TICK:  # the rest next tick
            until = served[-1].created_at
        asked: dict[int, str] = {}  # request's place in `served` → its prompt, when the drift is tested
        if watch.monitor.reference is not None:
            asked = {i: text for i, completion in enumerate(served) if (text := _logged_text(completion))}
        vectors = dict(zip(asked, self.embed(list(asked.values())), strict=True)) if asked else {}
        for i, completion in enumerate(served):
            failed = completion.finish_reason == "error"
            valid = (
                watch.validator(completion.text)
                if watch.validator is not None and completion.text is not None and not failed
                else None
            )
            report = watch.monitor.record(
                latency_ms=completion.latency_ms, error=failed, embedding=vectors.get(i), valid=valid
            )
            if report is not None:
                watch.reports.append(report)
        for score in self.registry.requests.scores(
            alias.tenant_id, watch.version_id, after=watch.until, until=until
        ):
            watch.monitor.feedback(score)
        watch.until = until

    def _trigger(self, alias: WatchedAlias, watch: _Watch) -> dict[str, Any] | None:
        """What fired, with its figures, or None."""
        drifted = [r for r in watch.reports if r.drifted]
        if alias.policy.triggers.drift is not None and drifted:
            report = drifted[0]
            return {
                "kind": "drift",
                "why": f"input drift: MMD p-value {report.mmd.p_value:.4f} < {report.alpha} "
                f"(classifier AUC {report.classifier.auc:.3f}) on {report.n_recent} recent prompts",
                "p_value": report.mmd.p_value,
                "auc": report.classifier.auc,
                "requests": watch.monitor.status().requests,
            }
        quality = alias.policy.triggers.quality
        if quality is not None:
            score = watch.monitor.quality if quality.source == "feedback" else watch.monitor.valid
            if score.below(quality.below, quality.min_feedback):
                return {
                    "kind": "quality",
                    "why": f"{quality.source} score {score.mean:.3f} < {quality.below} "
                    f"over {score.count} requests",
                    "score": score.mean,
                    "count": score.count,
                }
        return None

    # --- the rollout --------------------------------------------------------------------------------------

    def _canary_set_by_hand(
        self, alias: WatchedAlias, version: AdapterVersion, *, waiting: Rollout | None
    ) -> Rollout | None:
        """A rollout judging the canary someone set on the alias's users, if there is one: it is watched and
        decided like the controller's own. A rollout still `waiting` for corrections gives way to it."""
        canary = self.registry.routing.canary(alias.tenant_id, _split_model(alias))
        if canary is None:
            return None
        ref = parse_reference(canary.target_ref)
        target = self.registry.adapters.resolve(
            alias.tenant_id, ref.name, version=ref.version, alias=ref.alias
        )
        if target.id == version.id or target.adapter_id != alias.adapter_id:
            return None  # nothing new to judge, or another adapter's version: not this alias's candidate
        why = f"canary of {canary.target_ref} on {canary.percent:g}% of {canary.model}'s users, set by hand"
        self.say(f"{alias.adapter}:{alias.alias}: watching the {why}")
        if waiting is not None:
            self._finish(alias, waiting, "failed", "superseded", f"gave way to the {why}")
        return self.registry.adaptation.start(
            alias,
            trigger={"kind": "canary", "why": why},
            from_version_id=version.id,
            state="canary",
            candidate_version_id=target.id,
            canary_started_at=self.clock(),
        )

    def _advance(self, alias: WatchedAlias, rollout: Rollout) -> Rollout:
        """Move `rollout` on as far as what is true now allows (module docstring)."""
        if rollout.state == "waiting":
            rollout = self._start_job(alias, rollout)
        if rollout.state == "training":
            rollout = self._after_job(alias, rollout)
        if rollout.state == "canary":
            rollout = self._judge_canary(alias, rollout)
        return rollout

    def _start_job(self, alias: WatchedAlias, rollout: Rollout) -> Rollout:
        plan = alias.policy.train
        pairs = self.registry.requests.corrections(alias.tenant_id, version_id=rollout.from_version_id)
        if len(pairs) < plan.min_corrections:
            return rollout
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        name = f"corrections-{alias.adapter}-{stamp}.jsonl"
        dataset, skipped = store_corrections(self.registry, alias.tenant_id, pairs, self.tokenizer, name=name)
        if dataset is None or dataset.rows < plan.min_corrections:
            rows = 0 if dataset is None else dataset.rows
            return self._finish(
                alias,
                rollout,
                "failed",
                "corrections_refused",
                f"{len(skipped)} of {len(pairs)} corrections are not valid training rows; {rows} are left",
            )
        job = self.registry.jobs.create(
            alias.tenant_id,
            adapter_name=alias.adapter,
            dataset_id=dataset.id,
            base_model=self.base_model,
            recipe=plan.job_recipe(),
            parent_version_id=rollout.from_version_id,
        )
        self.registry.jobs.add_event(
            alias.tenant_id,
            job.id,
            f"queued by the adaptation controller for {alias.adapter}:{alias.alias} "
            f"(rollout {rollout.id}: {rollout.trigger.get('why', rollout.trigger.get('kind'))}), "
            f"on {dataset.rows} corrections",
            data={"rollout": rollout.id},
        )
        self.say(f"{alias.adapter}:{alias.alias}: job {job.id} queued on {dataset.rows} corrections")
        return self.registry.adaptation.advance(
            rollout,
            "training",
            event="job_queued",
            job_id=job.id,
            detail={"job": job.id, "file": dataset.id, "corrections": dataset.rows},
        )

    def _after_job(self, alias: WatchedAlias, rollout: Rollout) -> Rollout:
        assert rollout.job_id is not None
        job = self.registry.jobs.get(alias.tenant_id, rollout.job_id)
        if job.status not in FINISHED_STATES:
            return rollout
        if job.status != "succeeded" or job.version_id is None:
            return self._finish(
                alias,
                rollout,
                "failed",
                "job_failed",
                f"job {job.id} {job.status}: {job.error or ''}".strip(),
            )
        candidate = self.registry.adapters.by_id(alias.tenant_id, job.version_id)
        report = self.registry.evaluation.check(alias.tenant_id, candidate.id, alias.policy.gate)
        label = f"{alias.adapter}@{candidate.number}"
        if not report["passed"]:
            return self._finish(
                alias,
                rollout,
                "rolled_back",
                "gate_failed",
                f"{label}: {summary(report)}",
                candidate_version_id=candidate.id,
            )
        plan = alias.policy.canary
        canary = Canary(model=_split_model(alias), target_ref=label, percent=plan.percent)
        self.registry.routing.set_canary(alias.tenant_id, canary, actor=CONTROLLER)
        self._job_event(
            rollout, f"{label} passed the gate; canary on {plan.percent:g}% of {canary.model}'s users"
        )
        self.say(f"{alias.adapter}:{alias.alias}: {label} passed the gate, canary at {plan.percent:g}%")
        return self.registry.adaptation.advance(
            rollout,
            "canary",
            event="canary_started",
            candidate_version_id=candidate.id,
            canary_started_at=self.clock(),
            detail={"version": label, "percent": plan.percent, "gate": report},
        )

    def _judge_canary(self, alias: WatchedAlias, rollout: Rollout) -> Rollout:
        assert rollout.candidate_version_id is not None and rollout.canary_started_at is not None
        candidate = self.registry.adapters.by_id(alias.tenant_id, rollout.candidate_version_id)
        label = f"{alias.adapter}@{candidate.number}"
        production = self.registry.adapters.resolve(alias.tenant_id, alias.adapter, alias=alias.alias)
        if production.id == candidate.id:  # promoted before a restart: only the canary is left to clear
            self._clear_canary(alias)
            return self._finish(alias, rollout, "promoted", "promoted", f"{label} is {alias.alias}")
        if self.registry.routing.canary(alias.tenant_id, _split_model(alias)) is None:
            return self._finish(
                alias, rollout, "rolled_back", "rolled_back", f"the canary of {label} was cleared"
            )
        since = rollout.canary_started_at
        windows = [
            self.registry.requests.window(alias.tenant_id, version, since=since)
            for version in (candidate.id, production.id)
        ]
        canary, stable = (Window(w.scores, w.requests, w.errors) for w in windows)
        verdict = decide(canary, stable, alias.policy.canary, minutes=(self.clock() - since) / 60)
        if verdict.decision == "wait":
            return rollout
        figures = {
            "reason": verdict.reason,
            "p_value": verdict.p_value,
            "canary": _figures(canary),
            "production": _figures(stable),
        }
        if verdict.decision == "promote":
            try:
                self.registry.adapters.promote(
                    alias.tenant_id, alias.adapter, alias.alias, candidate.number, actor=CONTROLLER
                )
            except GateRefusedError as err:  # the adapter's own gate, stricter than the policy's
                self._clear_canary(alias)
                return self._finish(
                    alias, rollout, "rolled_back", "rolled_back", f"{label}: {err}", **figures
                )
            self._clear_canary(alias)
            return self._finish(
                alias, rollout, "promoted", "promoted", f"{label}: {verdict.reason}", **figures
            )
        self._clear_canary(alias)
        return self._finish(
            alias, rollout, "rolled_back", "rolled_back", f"{label}: {verdict.reason}", **figures
        )

    def _finish(
        self, alias: WatchedAlias, rollout: Rollout, state: str, event: str, outcome: str, **fields: Any
    ) -> Rollout:
        """End `rollout` in `state`, saying why (`outcome`) in its row, the adapter's history and its job's
        events; `candidate_version_id` in `fields` is set on the row, the rest go in the event's detail."""
        columns = {k: fields.pop(k) for k in ("candidate_version_id",) if k in fields}
        self.say(f"{alias.adapter}:{alias.alias}: {event.replace('_', ' ')}: {outcome}")
        self._job_event(rollout, f"{event.replace('_', ' ')}: {outcome}")
        return self.registry.adaptation.advance(
            rollout, state, event=event, outcome=outcome, detail={"outcome": outcome, **fields}, **columns
        )

    def _job_event(self, rollout: Rollout, message: str) -> None:
        if rollout.job_id is not None:
            self.registry.jobs.add_event(
                rollout.tenant_id, rollout.job_id, message, data={"rollout": rollout.id}
            )

    def _clear_canary(self, alias: WatchedAlias) -> None:
        with contextlib.suppress(NotFoundError):  # cleared already (by the run this one resumes, or by hand)
            self.registry.routing.clear_canary(alias.tenant_id, _split_model(alias), actor=CONTROLLER)

    # --- the base model, loaded on first use ----------------------------------------------------------------

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        if self._embed is None:
            from lorafleet.models import load_base
            from lorafleet.monitoring.embed import embed_texts

            model, tokenizer = load_base(self.base_model)
            self._tokenizer = self._tokenizer or tokenizer
            self._embed = lambda texts: embed_texts(model, tokenizer, texts)
        return self._embed(prompts)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from lorafleet.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.base_model)
        return self._tokenizer


def reference_prompts(prompts: Sequence[str], limit: int = 256) -> list[str]:
    """The drift reference's sample: up to `limit` of the (non-empty) training `prompts`, spread evenly."""
    kept = [prompt for prompt in prompts if prompt]
    return kept[:: max(1, len(kept) // limit)][:limit]


def _split_model(alias: WatchedAlias) -> str:
    """The model name whose requests the alias's canary samples (module docstring)."""
    return alias.adapter if alias.alias == "production" else f"{alias.adapter}:{alias.alias}"


def _asked(turns: Sequence[tuple[str, str]]) -> str:
    """What the user asked in a conversation: its user turns' contents, one per line."""
    return "\n".join(content for role, content in turns if role == "user")


def _logged_text(completion: LoggedCompletion) -> str | None:
    """The prompt of a logged completion, read as `_asked` reads a training row; None when none was logged."""
    if completion.prompt is not None:
        return completion.prompt
    if completion.messages is not None:
        return _asked([(m.get("role", ""), m.get("content", "")) for m in completion.messages])
    return None


def _figures(window: Window) -> dict[str, Any]:
    return {
        "requests": window.requests,
        "errors": window.errors,
        "scores": len(window.scores),
        "mean": window.mean,
    }


def _status(watch: _Watch, rollout: Rollout | None) -> dict[str, Any]:
    """What `/metrics` and the API show of the alias: its monitor's figures and the rollout under way."""
    status = watch.monitor.status()
    drift = status.drift
    return {
        "state": rollout.state if rollout is not None else "watching",
        "rollout": rollout.id if rollout is not None else None,
        "version_id": watch.version_id,
        "requests": status.requests,
        "windows_tested": status.windows_tested,
        "windows_drifted": status.windows_drifted,
        "drift_p_value": drift.mmd.p_value if drift is not None else None,
        "drift_auc": drift.classifier.auc if drift is not None else None,
        "quality": status.quality_mean,
        "quality_count": status.quality_count,
        "valid_rate": status.valid_rate,
        "error_rate": status.error_rate,
        "latency_p50_ms": status.latency_p50_ms,
        "latency_p95_ms": status.latency_p95_ms,
        "note": watch.note,
    }
