"""Real-time adaptation against a real `lorafleet serve` on 127.0.0.1: drift → corrections → continual job →
gate → canary → promotion, and a bad canary rolled back; bounded in time.

Setup: `lorafleet serve` as a subprocess (a free port, one job worker and the adaptation controller, a fresh
SQLite registry and artifact store under a temporary folder; the model from $LORAFLEET_HOME). A tenant and a
key through the admin API; the tenant uploads `--train-rows` support tickets (`data.support_tickets.TASK`)
and an eval suite of `--suite-rows` held-out ones with a gate on it (`--max-forgetting`), trains `support`
v1 through the jobs API and promotes it to production, then sets the adaptation policy on production:
drift trigger (MMD p-value < `--p-value` on windows of `--window` prompts), a continual job on the users'
corrections with replay of v1's rows, the canary plan (`--canary-percent`, `--canary-requests`).

Traffic: `--concurrency` client threads send chat completions (greedy, as `--users` users, OpenAI's `user`
field) and read the version that served each one from `system_fingerprint`. Phase 1 (`--phase1` requests):
tickets like the training ones. Phase 2: a share `--drift-share` of tickets are warranty claims with dates
written day first (`DRIFTED_TASK`: a ticket type and a date format never seen in training), the rest as
before, until the drifted alias is promoted (or `--timeout` s). Every user scores a share `--feedback-share`
of their answers (the answer's field accuracy, `POST /v1/feedback`); a share `--corrector-share` of the
users also send the right JSON as a correction when an answer is wrong.

Figures (written to `bench/results/adaptation.json`):

    false_positive_rate        drifted verdicts / windows tested on no-drift traffic: the live windows
                               of phase 1 (the monitor's own counts) and `--offline-windows` more windows
                               of fresh training-like prompts tested by the same code (`detect_drift`
                               against the same reference) in this process
    detection_delay_requests   phase-2 requests answered before the rollout was triggered
    trigger_to_promotion_s     the rollout's trigger to its promotion (the registry's timestamps)
    accuracy_drifted_*         accuracy of the fields the drift touches (type, date: the mean of the
                               two) on `--eval-rows` held-out drifted tickets, before/after; the
                               other three fields (customer, order_id, amount) are written as in
                               training, so their accuracy says nothing about the drift
    accuracy_drifted_all_*     field accuracy over all five fields of the same tickets
    accuracy_original_*        the same on held-out training-like tickets; forgetting = before − after
    status_5xx                 5xx answers over the whole run (and lost requests: no answer at all)
    bad_canary                 scenario 2: a version trained to answer garbage is put on a canary by hand
                               (`PUT /v1/adapters/support/canary`); the controller must roll it back within
                               one canary window (fewer than `--canary-requests` scored canary requests),
                               and no user outside the canary's sticky bucket may ever get it

Goals (the issue's): false-positive rate ≤ 5%, detection within 2 windows, trigger → promotion ≤ 600 s,
drifted accuracy < 0.5 before and ≥ 0.85 after, forgetting ≤ 0.02, zero 5xx, and the bad canary rolled
back in one window without reaching users outside it. The exit code is 1 when one is missed, 2 when the
run could not be made (the server log's tail is printed).

Run: `LORAFLEET_HOME=... .venv/bin/python bench/adaptation.py` (the default model is pulled into
$LORAFLEET_HOME first if it is not there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from lorafleet.data.support_tickets import DRIFTED_TASK, TASK
from lorafleet.serving.router import assignment_bucket
from lorafleet.training.metrics import json_field_scores
from serve_load import free_port, log_tail, machine_info, stop_server, wait_ready

RESULTS = Path(__file__).parent / "results"
SYSTEM_PROMPT = "You turn support tickets into JSON records."
RECIPE: dict[str, Any] = {  # the default recipe's (configs/default.yaml), as a job's recipe fields
    "data": {"system_prompt": SYSTEM_PROMPT, "max_length": 256},
    "lora": {
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "training": {
        "learning_rate": 2.0e-3,
        "max_steps": 24,
        "batch_size": 8,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
    },
}
console = Console()


# --- the server and its API --------------------------------------------------------------------------------


class Api:
    """The tenant's side of the API: JSON in and out, an error's message raised as `RuntimeError`."""

    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)

    def session(self) -> httpx.Client:
        """Another client with the same key (one per thread: each keeps its own connection)."""
        return httpx.Client(base_url=self.client.base_url, headers=self.client.headers, timeout=600)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.client.request(method, path, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()

    def upload(self, rows: list[dict[str, str]], name: str, purpose: str = "fine-tune") -> str:
        body = "".join(json.dumps(row) + "\n" for row in rows).encode()
        files = {"file": (name, body, "application/jsonl")}
        return str(self.call("POST", "/v1/files", files=files, data={"purpose": purpose})["id"])

    def train(self, file_id: str, *, recipe: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
        """Queue a job for adapter `support` and wait for it; the job."""
        body = {"model": "default", "training_file": file_id, "adapter": "support", "recipe": recipe}
        job = self.call("POST", "/v1/fine_tuning/jobs", json={**body, "parent": parent} if parent else body)
        while job["status"] in ("queued", "running"):
            time.sleep(2)
            job = self.call("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        return dict(job)


@contextmanager
def server(args: argparse.Namespace, work: Path, admin_key: str) -> Iterator[str]:
    """`lorafleet serve` on a free loopback port, with one worker and the controller; its URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("lorafleet")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "lorafleet"]
    command += [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    command += [
        "--database-url",
        f"sqlite:///{work / 'registry.db'}",
        "--artifacts-url",
        str(work / "artifacts"),
    ]
    env = os.environ | {
        "LORAFLEET_ADMIN_KEY": admin_key,
        "LORAFLEET_CONTROLLER__TICK_SECONDS": str(args.tick_seconds),
        "LORAFLEET_WORKER__HEARTBEAT_SECONDS": "2",
        # each process of the server (the engine, each job) computes on this many threads: on 2 cores the
        # engine and a job then each have one instead of both fighting over two (10× slower steps)
        "OMP_NUM_THREADS": str(args.threads),
    }
    with (work / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, args.startup_timeout)
        yield url
    finally:
        stop_server(process)


def tenant_key(url: str, admin_key: str) -> str:
    admin = {"Authorization": f"Bearer {admin_key}"}
    tenant = httpx.post(f"{url}/v1/tenants", json={"name": f"adapt-{secrets.token_hex(3)}"}, headers=admin)
    tenant.raise_for_status()
    key = httpx.post(f"{url}/v1/tenants/{tenant.json()['id']}/keys", json={"name": "bench"}, headers=admin)
    key.raise_for_status()
    return str(key.json()["key"])


# --- traffic -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as its client saw it."""

    index: int
    phase: int
    drifted: bool
    user: str
    status: int | None = None  # None: no answer (a transport error)
    version: str | None = None  # the served version, from `system_fingerprint`
    score: float | None = None  # the answer's field accuracy
    rated: bool = False  # the user sent that score as feedback
    finished: float = 0.0  # time.time() when the answer arrived
    error: str | None = None


def ask(
    client: httpx.Client, prompt: str, user: str, max_tokens: int
) -> tuple[int, str, str | None, str | None]:
    """(status, answer text, served version, completion id) of one greedy chat completion of `support`."""
    body = {
        "model": "support",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "user": user,
    }
    answer = client.post("/v1/chat/completions", json=body)
    if answer.status_code != 200:
        return answer.status_code, answer.text[:300], None, None
    data = answer.json()
    return 200, data["choices"][0]["message"]["content"], data.get("system_fingerprint"), data["id"]


def field_accuracy(answer: str, reference: str) -> float:
    return json_field_scores([answer], [reference]).field_accuracy


class Traffic:
    """Client threads sending tickets as a population of users, with feedback and corrections."""

    def __init__(self, api: Api, args: argparse.Namespace, seed: int) -> None:
        self.api, self.args = api, args
        self.rng = random.Random(seed)
        self.seen: set[str] = set()
        self.outcomes: list[Outcome] = []
        self.phase = 1
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.users = [f"user-{i:04d}" for i in range(args.users)]
        self.correctors = {
            u for u in self.users if assignment_bucket("corrects", u) < args.corrector_share * 100
        }

    def next_request(self) -> tuple[int, int, bool, str, dict[str, str]]:
        with self.lock:
            index = len(self.outcomes)
            drifted = self.phase == 2 and self.rng.random() < self.args.drift_share
            row = (DRIFTED_TASK if drifted else TASK).rows(1, self.rng, self.seen)[0]
            user = self.rng.choice(self.users)
            self.outcomes.append(Outcome(index, self.phase, drifted, user))
            return index, self.phase, drifted, user, row

    def client_loop(self, until: Callable[[], bool]) -> None:
        with self.api.session() as client:
            while not self.stop.is_set() and not until():
                index, _, _, user, row = self.next_request()
                outcome = self.outcomes[index]
                try:
                    status, text, version, completion_id = ask(
                        client, row["prompt"], user, self.args.max_tokens
                    )
                except httpx.HTTPError as err:
                    outcome.error, outcome.finished = repr(err), time.time()
                    continue
                outcome.status, outcome.version, outcome.finished = status, version, time.time()
                if status != 200 or completion_id is None:
                    outcome.error = text
                    continue
                outcome.score = field_accuracy(text, row["completion"])
                outcome.rated = self.feedback(client, completion_id, user, outcome.score, row["completion"])

    def feedback(
        self, client: httpx.Client, completion_id: str, user: str, score: float, reference: str
    ) -> bool:
        """Send the user's feedback on one answer, if any; whether it carried the score."""
        body: dict[str, Any] = {"completion_id": completion_id}
        if assignment_bucket(f"rates:{completion_id}", user) < self.args.feedback_share * 100:
            body["score"] = score
        if user in self.correctors and score < 1.0:
            body["correction"] = reference
        if len(body) > 1:
            answer = client.post("/v1/feedback", json=body)
            if answer.status_code >= 500:
                with self.lock:
                    self.outcomes.append(Outcome(-1, self.phase, False, user, status=answer.status_code))
        return "score" in body

    def run(self, until: Callable[[], bool]) -> None:
        """Send requests from `--concurrency` threads until `until()` (or `stop`)."""
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            for future in [pool.submit(self.client_loop, until) for _ in range(self.args.concurrency)]:
                future.result()

    def answered(self, phase: int | None = None, before: float | None = None) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.index >= 0
            and o.status is not None
            and (phase is None or o.phase == phase)
            and (before is None or o.finished <= before)
        ]


def evaluate(api: Api, rows: list[dict[str, str]], args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """Field accuracy of `support` on held-out `rows`, asked through the server (as users `eval-…`)."""
    with api.session() as client:

        def one(i: int) -> tuple[str, str | None]:
            status, text, version, _ = ask(client, rows[i]["prompt"], f"{tag}-{i}", args.max_tokens)
            if status != 200:
                raise RuntimeError(f"evaluation request {i}: {status} {text}")
            return text, version

        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(one, range(len(rows))))
    scores = json_field_scores([a for a, _ in answers], [r["completion"] for r in rows])
    return {
        "field_accuracy": scores.field_accuracy,
        "exact_match": scores.exact_match,
        "per_field": scores.per_field,
        "versions": sorted({v or "-" for _, v in answers}),
    }


# --- the scenarios -------------------------------------------------------------------------------------


def policy(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "triggers": {"drift": {"p_value": args.p_value, "window": args.window}},
        "train": {
            "min_corrections": args.min_corrections,
            "continual": {"strategy": "replay", "replay_share": args.replay_share},
            "recipe": {**RECIPE, "training": {**RECIPE["training"], "max_steps": args.adapt_steps}},
        },
        "canary": {
            "percent": args.canary_percent,
            "min_requests": args.canary_requests,
            "max_minutes": args.canary_minutes,
        },
    }


def rollouts(api: Api) -> list[dict[str, Any]]:
    return list(api.call("GET", "/v1/adapters/support/rollouts")["data"])


def drift_scenario(
    api: Api, args: argparse.Namespace, data: dict[str, list[dict[str, str]]]
) -> dict[str, Any]:
    """Phase 1 then drift, until the controller promotes a fix; the figures of scenario 1."""
    before = {
        "original": evaluate(api, data["eval_original"], args, "eval-before"),
        "drifted": evaluate(api, data["eval_drifted"], args, "eval-before-drift"),
    }
    console.print(
        f"before: {before['original']['field_accuracy']:.3f} original, "
        f"{before['drifted']['field_accuracy']:.3f} drifted"
    )
    api.call("PUT", "/v1/adapters/support/policies/production", json=policy(args))
    traffic = Traffic(api, args, seed=args.seed + 1)
    started = time.time()
    state: dict[str, Any] = {}

    def done() -> bool:
        if traffic.phase == 1 and len(traffic.outcomes) >= args.phase1:
            with traffic.lock:
                if traffic.phase == 1:  # the first thread past the mark: the monitor's no-drift windows
                    state["phase1_monitor"] = api.call("GET", "/v1/adapters/support/policies/production")[
                        "status"
                    ]
                    traffic.phase, state["drift_at"] = 2, time.time()
                    console.print(f"phase 2 (drift) from request {len(traffic.outcomes)}")
        return "finished" in state or time.time() - started > args.timeout

    def watch() -> None:
        while not traffic.stop.is_set() and time.time() - started < args.timeout + 60:
            found = rollouts(api)
            if found:
                state["rollout"] = found[0]
                if found[0]["state"] not in ("waiting", "training", "canary"):
                    state["finished"] = True
                    return
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    traffic.run(done)
    traffic.stop.set()
    watcher.join()
    monitor = api.call("GET", "/v1/adapters/support/policies/production")
    rollout = state.get("rollout")
    figures: dict[str, Any] = {
        "rollout": rollout,
        "monitor_after": monitor.get("status"),
        "phase1_monitor": state.get("phase1_monitor"),
    }
    if rollout is None or rollout["state"] != "promoted":
        figures["error"] = f"no promotion within {args.timeout:g} s: {rollout}"
        figures["traffic"] = traffic_summary(traffic)
        return figures
    triggered = float(rollout["created_at"])
    events = api.call("GET", "/v1/adapters/support/events")["data"]
    promoted_at = next(e["created_at"] for e in reversed(events) if e["kind"] == "promoted")
    after = {
        "original": evaluate(api, data["eval_original"], args, "eval-after"),
        "drifted": evaluate(api, data["eval_drifted"], args, "eval-after-drift"),
    }
    drift_at = state.get("drift_at", triggered)
    figures |= {
        "before": before,
        "after": after,
        "detection_delay_requests": len([o for o in traffic.answered(2) if o.finished <= triggered]),
        "trigger_to_promotion_s": promoted_at - triggered,
        "drift_to_trigger_s": triggered - drift_at,
        "trigger": rollout["trigger"],
        "traffic": traffic_summary(traffic),
        "events": [{k: e[k] for k in ("kind", "actor", "created_at")} for e in events],
    }
    return figures


def bad_canary_scenario(
    api: Api, args: argparse.Namespace, data: dict[str, list[dict[str, str]]]
) -> dict[str, Any]:
    """A version trained to answer garbage, put on a canary by hand; the controller must roll it back."""
    garbage = [
        {"prompt": r["prompt"], "completion": "Sorry, I cannot read this ticket."} for r in data["train"][:64]
    ]
    file_id = api.upload(garbage, "garbage.jsonl")
    recipe = {**RECIPE, "training": {**RECIPE["training"], "max_steps": 12, "learning_rate": 5e-3}}
    job = api.train(file_id, recipe=recipe)
    bad = f"support@{api.call('GET', '/v1/adapters/support/versions')['data'][-1]['version']}"
    console.print(f"bad version {bad} (job {job['id']}); canary on {args.canary_percent:g}% of users")
    traffic = Traffic(api, args, seed=args.seed + 2)
    traffic.phase = 2
    api.call("PUT", "/v1/adapters/support/canary", json={"target": bad, "percent": args.canary_percent})
    started = time.time()
    state: dict[str, Any] = {}

    def done() -> bool:
        found = rollouts(api)[0]
        if found["trigger"].get("kind") == "canary" and found["state"] not in (
            "waiting",
            "training",
            "canary",
        ):
            state["rollout"] = found
        return "rollout" in state or time.time() - started > args.timeout

    traffic.run(done)
    served_bad = [o for o in traffic.answered() if o.version == bad]
    outside = [
        o.user for o in served_bad if assignment_bucket("canary:support", o.user) >= args.canary_percent
    ]
    rollout = state.get("rollout")
    late = [
        o
        for o in served_bad
        if rollout is not None and o.finished > rollout["finished_at"] + args.tick_seconds
    ]
    rated = len([o for o in served_bad if o.rated])
    return {
        "version": bad,
        "rollout": rollout,
        "rolled_back": rollout is not None and rollout["state"] == "rolled_back",
        "seconds_to_rollback": (rollout["finished_at"] - started) if rollout else None,
        "requests_served_by_it": len(served_bad),
        "its_answers_rated": rated,
        "within_one_canary_window": rollout is not None and rated < args.canary_requests,
        "users_outside_canary_served": len(set(outside)),
        "served_after_rollback": len(late),  # answered a tick or more after it (queued before, at most)
        "traffic": traffic_summary(traffic),
    }


def traffic_summary(traffic: Traffic) -> dict[str, Any]:
    answered = traffic.answered()
    return {
        "requests": len([o for o in traffic.outcomes if o.index >= 0]),
        "answered": len(answered),
        "status_5xx": len([o for o in traffic.outcomes if o.status is not None and o.status >= 500]),
        "status_4xx": len([o for o in traffic.outcomes if o.status is not None and 400 <= o.status < 500]),
        "lost": len([o for o in traffic.outcomes if o.index >= 0 and o.status is None]),
        "errors": [o.error for o in traffic.outcomes if o.error][:5],
        "served_by": {
            v: len([o for o in answered if o.version == v])
            for v in sorted({o.version or "-" for o in answered})
        },
    }


def offline_false_positives(
    args: argparse.Namespace, data: dict[str, list[dict[str, str]]]
) -> dict[str, Any]:
    """Windows of fresh training-like prompts tested against v1's reference, as the controller tests them."""
    from lorafleet.models import load_base
    from lorafleet.monitoring.drift import detect_drift
    from lorafleet.monitoring.embed import embed_texts
    from lorafleet.rollout.controller import reference_prompts

    model, tokenizer = load_base("default")
    reference = embed_texts(model, tokenizer, reference_prompts([r["prompt"] for r in data["train"]]))
    rng, seen = random.Random(args.seed + 3), {r["prompt"] for r in data["train"]}
    drifted = 0
    for k in range(args.offline_windows):
        prompts = [r["prompt"] for r in TASK.rows(args.window, rng, seen)]
        report = detect_drift(reference, embed_texts(model, tokenizer, prompts), alpha=args.p_value, seed=k)
        drifted += report.drifted
    return {"windows": args.offline_windows, "drifted": drifted}


# --- the run -------------------------------------------------------------------------------------------


def make_data(args: argparse.Namespace) -> dict[str, list[dict[str, str]]]:
    rng, seen = random.Random(args.seed), set()
    return {
        "train": TASK.rows(args.train_rows, rng, seen),
        "suite": TASK.rows(args.suite_rows, rng, seen),
        "eval_original": TASK.rows(args.eval_rows, rng, seen),
        "eval_drifted": DRIFTED_TASK.rows(args.eval_rows, rng, seen),
    }


def setup(api: Api, args: argparse.Namespace, data: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """v1 of `support` trained, scored on its suite, gated and in production."""
    suite_file = api.upload(data["suite"], "suite.jsonl", purpose="eval")
    suite = api.call(
        "POST", "/v1/adapters/support/suites", json={"file": suite_file, "metric": "json_fields"}
    )
    api.call("PUT", "/v1/adapters/support/gate", json={"policy": {"max_forgetting": args.max_forgetting}})
    started = time.time()
    recipe = {**RECIPE, "training": {**RECIPE["training"], "max_steps": args.train_steps}}
    job = api.train(api.upload(data["train"], "train.jsonl"), recipe=recipe)
    api.call("POST", "/v1/adapters/support/aliases/production", json={"version": 1})
    return {"suite": suite["id"], "v1_job": job["id"], "v1_train_s": time.time() - started}


def judge(results: dict[str, Any]) -> dict[str, bool]:
    drift, bad = results["drift"], results["bad_canary"]
    return {
        "false-positive rate ≤ 5%": results["false_positive_rate"] is not None
        and results["false_positive_rate"] <= 0.05,
        "detected within 2 windows": (results["detection_delay_requests"] or 1e9)
        <= 2 * results["args"]["window"],
        "trigger → promotion ≤ 600 s": (results["trigger_to_promotion_s"] or 1e9) <= 600,
        "drifted accuracy < 0.5 before": (results["accuracy_drifted_before"] or 1.0) < 0.5,
        "drifted accuracy ≥ 0.85 after": (results["accuracy_drifted_after"] or 0.0) >= 0.85,
        "forgetting ≤ 2 points": results["forgetting"] is not None and results["forgetting"] <= 0.02,
        "zero 5xx": results["status_5xx"] == 0 and "error" not in drift,
        "bad canary rolled back in one window": bool(
            bad.get("rolled_back") and bad.get("within_one_canary_window")
        ),
        "no user outside the canary got it": bad.get("users_outside_canary_served") == 0,
    }


def report(results: dict[str, Any]) -> None:
    table = Table(title="real-time adaptation (bench/adaptation.py)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in (
        "false_positive_rate",
        "detection_delay_requests",
        "trigger_to_promotion_s",
        "accuracy_drifted_before",
        "accuracy_drifted_after",
        "accuracy_original_before",
        "accuracy_original_after",
        "forgetting",
        "accuracy_drifted_all_fields_before",
        "accuracy_drifted_all_fields_after",
        "exact_match_drifted_before",
        "exact_match_drifted_after",
        "status_5xx",
    ):
        value = results[key]
        table.add_row(
            key, "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        )
    console.print(table)
    for name, met in results["targets"].items():
        console.print(f"{'PASS' if met else 'FAIL'}  {name}")


OPTIONS: list[tuple[str, type, object, str]] = [
    ("--train-rows", int, 300, "tickets v1 is trained on"),
    ("--train-steps", int, 24, "steps of v1's job (the default recipe's)"),
    ("--suite-rows", int, 30, "held-out tickets of the eval suite the gate reads"),
    ("--eval-rows", int, 60, "held-out tickets of each kind scored before and after"),
    ("--max-forgetting", float, 0.05, "the gate: most forgetting on the suite"),
    ("--users", int, 200, "simulated users"),
    ("--concurrency", int, 8, "client threads"),
    ("--max-tokens", int, 96, "tokens an answer may take"),
    ("--phase1", int, 200, "training-like requests before the drift"),
    ("--drift-share", float, 0.5, "share of phase-2 tickets that are drifted"),
    ("--feedback-share", float, 0.5, "share of answers users score"),
    ("--corrector-share", float, 0.3, "share of users who correct a wrong answer"),
    ("--window", int, 100, "prompts per drift window"),
    ("--p-value", float, 0.01, "drift trigger: MMD p-value below this"),
    ("--min-corrections", int, 80, "corrections the controller waits for"),
    ("--replay-share", float, 0.5, "share of each step replaying v1's rows"),
    ("--adapt-steps", int, 24, "steps of the controller's continual job"),
    ("--canary-percent", float, 50.0, "share of users on a canary"),
    ("--canary-requests", int, 20, "scored canary requests before it may be promoted"),
    ("--canary-minutes", float, 10.0, "an undecided canary is rolled back after this"),
    ("--offline-windows", int, 20, "no-drift windows tested in this process for the false-positive rate"),
    ("--tick-seconds", float, 2.0, "the controller's tick"),
    ("--threads", int, 1, "torch threads of each server process (OMP_NUM_THREADS): the engine, each job"),
    ("--timeout", float, 1800.0, "seconds a scenario's traffic may run"),
    ("--startup-timeout", float, 300.0, "seconds to wait for /readyz"),
    ("--seed", int, 0, "seed of the data and the traffic"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    return parser.parse_args()


def main() -> int:
    from lorafleet.models.bundled import pull_default

    args = parse_args()
    pull_default()
    data = make_data(args)
    admin_key = secrets.token_hex(16)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lorafleet-adaptation-") as folder:
        work = Path(folder)
        try:
            with server(args, work, admin_key) as url:
                api = Api(url, tenant_key(url, admin_key))
                prepared = setup(api, args, data)
                console.print(f"v1 trained in {prepared['v1_train_s']:.0f} s and promoted")
                drift = drift_scenario(api, args, data)
                bad = bad_canary_scenario(api, args, data) if "error" not in drift else {}
                metrics = httpx.get(f"{url}/metrics").text
        except (RuntimeError, httpx.HTTPError) as err:
            console.print(f"[red]the run could not be made: {err}[/red]\n{log_tail(work / 'server.log')}")
            return 2
    offline = offline_false_positives(args, data)
    phase1 = drift.get("phase1_monitor") or {}
    tested = offline["windows"] + int(phase1.get("windows_tested") or 0)
    flagged = offline["drifted"] + int(phase1.get("windows_drifted") or 0)
    before, after = drift.get("before", {}), drift.get("after", {})

    def accuracy(which: dict[str, Any], kind: str) -> float | None:
        return which[kind]["field_accuracy"] if kind in which else None

    def drifted_fields(which: dict[str, Any]) -> float | None:
        per_field = which["drifted"]["per_field"] if "drifted" in which else None
        return (per_field["type"] + per_field["date"]) / 2 if per_field else None

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": vars(args),
        "seconds": time.time() - started,
        "false_positive_rate": flagged / tested if tested else None,
        "false_positive_windows": {"tested": tested, "drifted": flagged, "offline": offline, "live": phase1},
        "detection_delay_requests": drift.get("detection_delay_requests"),
        "trigger_to_promotion_s": drift.get("trigger_to_promotion_s"),
        "accuracy_drifted_before": drifted_fields(before),
        "accuracy_drifted_after": drifted_fields(after),
        "accuracy_original_before": accuracy(before, "original"),
        "accuracy_original_after": accuracy(after, "original"),
        "forgetting": (accuracy(before, "original") or 0) - (accuracy(after, "original") or 0)
        if after
        else None,
        # beside the figures: all five fields, and whole records
        "accuracy_drifted_all_fields_before": accuracy(before, "drifted"),
        "accuracy_drifted_all_fields_after": accuracy(after, "drifted"),
        "exact_match_drifted_before": before["drifted"]["exact_match"] if before else None,
        "exact_match_drifted_after": after["drifted"]["exact_match"] if after else None,
        "status_5xx": drift.get("traffic", {}).get("status_5xx", 0)
        + bad.get("traffic", {}).get("status_5xx", 0),
        "setup": prepared,
        "drift": drift,
        "bad_canary": bad,
        "metrics_sample": [line for line in metrics.splitlines() if line.startswith("lorafleet_alias_")],
    }
    results["targets"] = judge(results)
    report(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adaptation.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
