"""`lorafleet serve` under load on loopback: many tenants, concurrent streaming chat, bounded in time.

Setup: random LoRA adapters of the base (r=16, α=32 on q/k/v/o_proj, one per tenant, made as
bench/serve_throughput.py makes them), then `lorafleet serve` as a subprocess on 127.0.0.1 (a free
port, `--workers 0`, a temporary SQLite registry and artifact store; the model comes from
$LORAFLEET_HOME), `--tenants` tenants and keys created through the admin API, one adapter registered
per tenant in the server's registry.

Load: `--concurrency` client tasks (asyncio + one httpx pool, a connection each), each looping: one
streaming `POST /v1/chat/completions` (a short prompt, greedy, `ignore_eos` so it makes exactly its
`max_tokens`: `--max-tokens` on average, from half to 1.5 times it, so rows leave the batch at
different steps and new ones join, as in real traffic), read to `data: [DONE]`, record, repeat.
Request n goes to tenant n mod `--tenants` with that tenant's adapter, or to the base model for every
`--base-every`-th request of a tenant. Clients start requests for `--warmup` + `--seconds` s; requests
started by then are awaited for up to `--grace` s. The first `--warmup` s are left out of the figures:

    latency, TTFT      p50/p99 over the successful requests started after warm-up (TTFT: the first
                       chunk with text, so it includes the wait in the engine's queue)
    throughput         tokens streamed inside the `--seconds` window (each successful request's
                       tokens × its share of text chunks that arrived then) and requests finished in
                       it, divided by `--seconds`; and as a ratio to the peer, the engine alone in
                       this process on `--reference-requests` requests of the same mix submitted at
                       once, run before the server starts and after it stops (their mean, as a shared
                       machine's speed drifts): what the server's HTTP, streaming, auth and metering
                       cost on top of the engine
    errors             over every request sent, warm-up included: 5xx, 429, other 4xx, and lost
                       (no answer, a transport error, an error event in the stream, no [DONE], or
                       not finished `--grace` s after the window; there is no timeout between bytes)
    memory             RSS of the server process and its children at warm-up end and after the run
                       (growth = (end - start) / start), sampled every second for the max

Targets (the issue's): zero 5xx, zero lost requests, RSS growth under 10%. The exit code is 1 when
one is missed, 2 when the run could not be made (the server log's tail is printed then).

Run: `LORAFLEET_HOME=... .venv/bin/python bench/serve_load.py` (about 2 min with the defaults on 2 cores; the
default model is converted into $LORAFLEET_HOME first if it is not there, as `lorafleet models pull
default` does). Prints a table and writes `bench/results/serve_load.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lorafleet.adapters import LoraSettings, attach, save_adapter
from lorafleet.models import load_base
from lorafleet.models.bundled import pull_default
from lorafleet.registry import Registry
from lorafleet.serving.cache import DirectorySource
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings
from lorafleet.serving.requests import Request

RESULTS = Path(__file__).parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MB = 2**20
PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Give me a name for a cat.",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "Tell me a fun fact about octopuses.",
]


@dataclass
class Outcome:
    """One request as the client saw it; times are `time.perf_counter()` seconds."""

    tenant: int
    model: str
    started: float
    status: int | None = None  # HTTP status; None: no answer (a transport error, or still running)
    first_token: float | None = None
    text_times: list[float] = field(default_factory=list)  # arrival of each chunk with text
    finished: float | None = None
    tokens: int = 0  # completion tokens, from the stream's usage chunk
    done: bool = False  # read to `data: [DONE]` without an error event
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None

    @property
    def lost(self) -> bool:
        """Never answered, or answered 200 but the stream failed or never finished."""
        return self.status is None or (self.status == 200 and not self.ok)


@dataclass
class Tenant:
    name: str
    key: str
    adapter: str


# --- setup ---------------------------------------------------------------------------------------------


def make_adapters(base: PreTrainedModel, count: int, folder: Path) -> list[Path]:
    """`count` random r=16 adapters of `base` on q/k/v/o: one attach, the LoRA weights re-drawn for each."""
    peft_model = attach(
        copy.deepcopy(base), LoraSettings(r=16, alpha=32, target_modules=TARGETS, init="random")
    )
    paths = []
    for i in range(count):
        torch.manual_seed(1000 + i)
        for module in peft_model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
                module.reset_parameters()  # the lora_A / lora_B layers (the base is frozen): B ≠ 0
        paths.append(save_adapter(peft_model, folder / f"a{i}"))
    return paths


def plan(n: int, args: argparse.Namespace) -> tuple[int, bool, str, int]:
    """Request n's tenant (round-robin), whether it asks the base model, its prompt and its tokens: from
    `--max-tokens` // 2 to 1.5 × `--max-tokens`, spread evenly, so rows finish at different steps."""
    tenant = n % args.tenants
    base = args.base_every > 0 and (n // args.tenants) % args.base_every == args.base_every - 1
    return tenant, base, PROMPTS[n % len(PROMPTS)], args.max_tokens // 2 + (7 * n) % (args.max_tokens + 1)


def engine_alone(
    args: argparse.Namespace, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, adapters: list[Path]
) -> dict[str, float]:
    """The peer: the engine in this process on `--reference-requests` requests of the load's mix, all
    submitted at once (so every step decodes a full batch, as the server's does under load)."""
    source = DirectorySource({f"a{i}": p for i, p in enumerate(adapters)})
    engine = Engine.for_model(
        copy.deepcopy(base), tokenizer, source=source, max_batch=args.max_batch, max_slots=32
    )

    def requests(count: int) -> list[Request]:
        return [
            Request(
                messages=[{"role": "user", "content": prompt}],
                adapter=None if is_base else f"a{t}",
                sampling=SamplingSettings(max_tokens=tokens, temperature=0, chat=True, ignore_eos=True),
            )
            for t, is_base, prompt, tokens in (plan(n, args) for n in range(count))
        ]

    engine.generate(requests(args.tenants * max(1, args.base_every)))  # every adapter into a slot
    start = time.perf_counter()
    completions = engine.generate(requests(args.reference_requests))
    seconds = time.perf_counter() - start
    tokens = sum(c.completion_tokens for c in completions)
    return {
        "requests": len(completions),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(args: argparse.Namespace, work: Path, port: int, admin_key: str) -> subprocess.Popen[bytes]:
    """`lorafleet serve` on 127.0.0.1:`port` with a fresh registry under `work`; its output goes to a log."""
    exe = Path(sys.executable).with_name("lorafleet")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "lorafleet"]
    helptext = subprocess.run([*command, "serve", "--help"], capture_output=True, text=True).stdout
    command += ["serve", "--host", "127.0.0.1", "--port", str(port), "--model", args.model]
    command += ["--workers", "0", "--max-batch", str(args.max_batch), "--log-level", "warning"]
    command += [
        "--database-url",
        f"sqlite:///{work / 'registry.db'}",
        "--artifacts-url",
        str(work / "artifacts"),
    ]
    if "--queue-size" in helptext:
        command += ["--queue-size", str(args.queue_size)]
    env = os.environ | {"LORAFLEET_ADMIN_KEY": admin_key, "LORAFLEET_QUEUE_SIZE": str(args.queue_size)}
    with (work / "server.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(server: subprocess.Popen[bytes], url: str, timeout: float) -> float:
    """Seconds until `GET /readyz` answers 200; `RuntimeError` if the server exits or takes over `timeout`."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout:g} s")


def stop_server(server: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after 30 s; the exit code."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


def create_tenants(
    url: str, admin_key: str, registry: Registry, adapters: list[Path], base_model: str
) -> list[Tenant]:
    """A tenant and a key per adapter through the admin API, and the adapter registered as the tenant's."""
    tenants = []
    admin = {"Authorization": f"Bearer {admin_key}"}
    suffix = secrets.token_hex(3)
    for i, path in enumerate(adapters):
        answer = httpx.post(f"{url}/v1/tenants", json={"name": f"load-{i}-{suffix}"}, headers=admin)
        answer.raise_for_status()
        tenant = answer.json()
        answer = httpx.post(f"{url}/v1/tenants/{tenant['id']}/keys", json={"name": "bench"}, headers=admin)
        answer.raise_for_status()
        registry.adapters.register(tenant["id"], f"assistant-{i}", path, base_model=base_model)
        tenants.append(Tenant(name=tenant["name"], key=answer.json()["key"], adapter=f"assistant-{i}"))
    return tenants


def server_memory(pid: int) -> tuple[int, int]:
    """RSS bytes of the process and its children, and their threads."""
    process = psutil.Process(pid)
    family = [process, *process.children(recursive=True)]
    rss = threads = 0
    for member in family:
        try:
            rss += member.memory_info().rss
            threads += member.num_threads()
        except psutil.NoSuchProcess:
            pass
    return rss, threads


# --- load ----------------------------------------------------------------------------------------------


async def chat(client: httpx.AsyncClient, tenant: Tenant, outcome: Outcome, body: dict[str, Any]) -> None:
    """Send one streaming chat request and read it to `[DONE]`, filling in `outcome`."""
    headers = {"Authorization": f"Bearer {tenant.key}"}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                outcome.error = (await response.aread()).decode(errors="replace")[:300]
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    outcome.done = outcome.error is None
                    break
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    outcome.error = str(chunk["error"].get("message"))[:300]
                if chunk.get("usage"):
                    outcome.tokens = chunk["usage"]["completion_tokens"]
                texts = [c.get("delta", {}).get("content") for c in chunk.get("choices", [])]
                if any(texts):
                    outcome.text_times.append(time.perf_counter())
                    outcome.first_token = outcome.first_token or outcome.text_times[0]
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        outcome.error = f"{type(err).__name__}: {err}"[:300]
    except asyncio.CancelledError:
        outcome.error = "not finished within --grace seconds of the window's end"
        raise
    finally:
        outcome.finished = time.perf_counter()


async def run_load(
    args: argparse.Namespace, url: str, tenants: list[Tenant], pid: int
) -> tuple[list[Outcome], dict[str, Any]]:
    """`--concurrency` clients for `--warmup` + `--seconds` s, then the grace wait; outcomes and window."""
    outcomes: list[Outcome] = []
    counter = itertools.count()
    samples: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    timeout = httpx.Timeout(None, connect=10.0)  # a slow stream is bounded by --grace, not between bytes

    async def client_loop(client: httpx.AsyncClient, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            tenant_index, base, prompt, max_tokens = plan(next(counter), args)
            tenant = tenants[tenant_index]
            model = args.model if base else tenant.adapter
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            outcome = Outcome(tenant=tenant_index, model=model, started=time.perf_counter())
            outcomes.append(outcome)  # before sending: one cancelled after the grace time counts as lost
            await chat(client, tenant, outcome, body)
            if outcome.status == 429:
                await asyncio.sleep(1.0)

    async def sample_memory() -> None:
        while True:
            samples.append((time.perf_counter(), server_memory(pid)[0]))
            await asyncio.sleep(1.0)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        began = time.perf_counter()
        warm_end, stop_at = began + args.warmup, began + args.warmup + args.seconds
        sampler = asyncio.create_task(sample_memory())
        clients = [asyncio.create_task(client_loop(client, stop_at)) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        rss_start, threads_start = server_memory(pid)
        print(f"  warm-up done: {len(outcomes)} requests sent; measuring {args.seconds:g} s", flush=True)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        print(f"  window over: {len(outcomes)} requests sent; waiting for those in flight", flush=True)
        _, pending = await asyncio.wait(clients, timeout=args.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        drained = time.perf_counter()
        rss_end, threads_end = server_memory(pid)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    window = {
        "began": began,
        "warm_end": warm_end,
        "stop_at": stop_at,
        "drain_s": drained - stop_at,
        "rss_start": rss_start,
        "rss_end": rss_end,
        "rss_max": max(rss for _, rss in samples),
        "rss_samples": [(round(t - began, 1), round(rss / MB)) for t, rss in samples],
        "threads_start": threads_start,
        "threads_end": threads_end,
    }
    return outcomes, window


# --- figures -------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarise(args: argparse.Namespace, outcomes: list[Outcome], window: dict[str, Any]) -> dict[str, Any]:
    """The figures of the run (see the module docstring for what each counts)."""
    start, stop = window["warm_end"], window["stop_at"]
    measured = [o for o in outcomes if o.ok and o.started >= start]
    finished = [o for o in outcomes if o.ok and o.finished is not None and start <= o.finished <= stop]
    # each request's tokens in the window: its share of text chunks that arrived then
    tokens = sum(
        o.tokens * sum(start <= t <= stop for t in o.text_times) / len(o.text_times)
        for o in outcomes
        if o.ok and o.text_times
    )
    latency = [(o.finished or 0.0) - o.started for o in measured]
    ttft = [o.first_token - o.started for o in measured if o.first_token is not None]
    statuses = [o.status for o in outcomes]
    lost = [o for o in outcomes if o.lost]
    refused = sorted({f"{o.status}: {o.error}" for o in outcomes if o.status not in (None, 200)})
    rss_start, rss_end = window["rss_start"], window["rss_end"]
    return {
        "requests_sent": len(outcomes),
        "requests_ok": sum(o.ok for o in outcomes),
        "requests_measured": len(measured),
        "lost": len(lost),
        "lost_no_answer": sum(o.status is None for o in lost),
        "lost_examples": [o.error or "never finished" for o in lost[:5]],
        "status_5xx": sum(s is not None and s >= 500 for s in statuses),
        "status_429": statuses.count(429),
        "status_other_4xx": sum(s is not None and 400 <= s < 500 and s != 429 for s in statuses),
        "error_examples": refused[:5],
        "base_model_requests": sum(o.model == args.model for o in outcomes),
        "requests_per_tenant": [sum(o.tenant == i for o in outcomes) for i in range(args.tenants)],
        "latency_p50_s": percentile(latency, 50),
        "latency_p99_s": percentile(latency, 99),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "tokens_per_request_mean": statistics.mean([o.tokens for o in measured]) if measured else None,
        "tokens_per_s": tokens / args.seconds,
        "requests_per_s": len(finished) / args.seconds,
        "drain_s": window["drain_s"],
        "rss_start_mb": rss_start / MB,
        "rss_end_mb": rss_end / MB,
        "rss_max_mb": window["rss_max"] / MB,
        "rss_growth": (rss_end - rss_start) / rss_start,
        "rss_every_second_mb": window["rss_samples"],  # (seconds since the load began, MiB)
        "server_threads_start": window["threads_start"],
        "server_threads_end": window["threads_end"],
    }


def compare(figures: dict[str, Any], peer: list[dict[str, float]]) -> dict[str, Any]:
    """The peer's runs (before and after the server's), and the server's tokens/s over their mean."""
    if not peer:
        return {"engine_alone": [], "server_over_engine_alone": None}
    mean = statistics.mean(run["tokens_per_s"] for run in peer)
    return {"engine_alone": peer, "server_over_engine_alone": figures["tokens_per_s"] / mean}


def engine_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    if not figures["engine_alone"]:
        return []
    runs = " / ".join(f"{run['tokens_per_s']:.1f}" for run in figures["engine_alone"])
    return [
        ("tokens/s of the engine alone, before / after (peer)", runs),
        ("server tokens/s ÷ engine alone (mean)", f"{figures['server_over_engine_alone']:.2f}"),
    ]


def judge(figures: dict[str, Any]) -> dict[str, bool]:
    return {
        "zero 5xx": figures["status_5xx"] == 0,
        "zero lost requests": figures["lost"] == 0,
        "RSS growth under 10%": figures["rss_growth"] < 0.10,
    }


def report(
    console: Console, args: argparse.Namespace, figures: dict[str, Any], targets: dict[str, bool]
) -> None:
    """Print the figures as a table, then one PASS/FAIL line per target."""

    def seconds(key: str) -> str:
        return "-" if figures[key] is None else f"{figures[key]:.2f} s"

    table = Table(
        title=(
            f"lorafleet serve under load: {args.concurrency} concurrent streaming chats, "
            f"{args.tenants} tenants, {args.seconds:g} s after {args.warmup:g} s warm-up, "
            f"{args.max_tokens} tokens per request on average, {args.model}"
        )
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("requests sent (all) / ok", f"{figures['requests_sent']} / {figures['requests_ok']}"),
        ("requests measured (started after warm-up, ok)", str(figures["requests_measured"])),
        ("lost", str(figures["lost"])),
        ("5xx", str(figures["status_5xx"])),
        ("429", str(figures["status_429"])),
        ("other 4xx", str(figures["status_other_4xx"])),
        ("base-model requests", str(figures["base_model_requests"])),
        ("latency p50 / p99", f"{seconds('latency_p50_s')} / {seconds('latency_p99_s')}"),
        ("TTFT p50 / p99", f"{seconds('ttft_p50_s')} / {seconds('ttft_p99_s')}"),
        ("tokens/s (streamed in window)", f"{figures['tokens_per_s']:.1f}"),
        ("requests/s (finished in window)", f"{figures['requests_per_s']:.2f}"),
        *engine_rows(figures),
        ("drain after window", f"{figures['drain_s']:.1f} s"),
        (
            "server RSS start / end / max",
            "{rss_start_mb:.0f} / {rss_end_mb:.0f} / {rss_max_mb:.0f} MiB".format(**figures),
        ),
        ("server RSS growth", f"{figures['rss_growth']:+.1%}"),
        (
            "server threads start / end",
            f"{figures['server_threads_start']} / {figures['server_threads_end']}",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for example in figures["error_examples"] + figures["lost_examples"]:
        console.print(f"  e.g. {example}")
    for name, met in targets.items():
        console.print(f"{'PASS' if met else 'FAIL'}  {name}")


def machine_info() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


OPTIONS: list[tuple[str, type, object, str]] = [
    ("--seconds", float, 60.0, "measured window, after the warm-up"),
    ("--warmup", float, 10.0, "seconds of load left out of the figures"),
    ("--concurrency", int, 100, "client tasks, each with one request at a time"),
    ("--tenants", int, 3, "tenants, each with a key and its own adapter"),
    ("--max-tokens", int, 16, "tokens a request generates on average (from half to 1.5 times it)"),
    ("--base-every", int, 4, "every n-th request of a tenant asks the base model (0: never)"),
    ("--model", str, "default", "the base model `lorafleet serve --model` serves"),
    ("--port", int, 0, "server port (0: a free one)"),
    ("--max-batch", int, 32, "the server's --max-batch"),
    ("--queue-size", int, 256, "the server's queue (at least --concurrency: no 429s)"),
    ("--grace", float, 120.0, "seconds to wait for the requests in flight when the window ends"),
    ("--reference-requests", int, 32, "requests of each run of the in-process engine peer (0: none)"),
    ("--startup-timeout", float, 300.0, "seconds to wait for /readyz"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--keep-server-log", action="store_true", help="keep the temporary registry and server.log"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    console, started = Console(width=140), time.perf_counter()
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = machine_info()
    console.print(
        f"serve_load  {date}  {machine['cpu_model']}  {machine['cpu_count']} CPUs  torch {machine['torch']}  "
        f"load average {machine['load_average_1min']:.1f}"
    )
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    admin_key = secrets.token_urlsafe(24)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    failed = True
    try:
        if args.model == "default":
            pull_default()  # converts the bundled GGUF into $LORAFLEET_HOME once; fast when already there
        base, tokenizer = load_base(args.model, device="cpu", dtype="float32")
        adapters = make_adapters(base, args.tenants, work / "adapters")
        peer = [engine_alone(args, base, tokenizer, adapters)] if args.reference_requests else []
        for run in peer:
            console.print(f"  engine alone, before the server: {run['tokens_per_s']:.1f} tokens/s")
        server = start_server(args, work, port, admin_key)
        ready_s = wait_ready(server, url, args.startup_timeout)
        registry = Registry(f"sqlite:///{work / 'registry.db'}", artifacts_url=str(work / "artifacts"))
        try:
            tenants = create_tenants(url, admin_key, registry, adapters, args.model)
        finally:
            registry.close()
        rss_ready = server_memory(server.pid)[0]
        console.print(
            f"  server pid {server.pid} ready in {ready_s:.1f} s on {url} (RSS {rss_ready / MB:.0f} MiB); "
            f"{len(tenants)} tenants with an adapter each"
        )
        outcomes, window = asyncio.run(run_load(args, url, tenants, server.pid))
        if server.poll() is not None:
            console.print(f"the server exited with code {server.returncode} during the run")
        stopping = time.perf_counter()
        stop_server(server)
        figures = summarise(args, outcomes, window) | {
            "server_ready_s": ready_s,
            "server_stop_s": time.perf_counter() - stopping,
            "rss_ready_mb": rss_ready / MB,
        }
        if peer:
            peer.append(engine_alone(args, base, tokenizer, adapters))
            console.print(f"  engine alone, after the server: {peer[-1]['tokens_per_s']:.1f} tokens/s")
        figures |= compare(figures, peer)
        targets = judge(figures)
        report(console, args, figures, targets)
        failed = not all(targets.values())
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "serve_load.json"
        meta = {"date": date, "machine": machine, "args": vars(args)}
        end = {"runtime_s": time.perf_counter() - started, "load_average_end": os.getloadavg()}
        out.write_text(json.dumps(meta | {"figures": figures, "targets": targets} | end, indent=2) + "\n")
        console.print(f"finished in {end['runtime_s']:.0f} s; wrote {out}")
        return 1 if failed else 0
    except Exception as err:
        console.print(f"the run failed: {type(err).__name__}: {err}")
        return 2
    finally:
        code = None if server is None else stop_server(server)
        if failed and server is not None:
            console.print(
                f"server exit code {code}; the last lines of its log:\n{log_tail(work / 'server.log')}"
            )
        if args.keep_server_log:
            console.print(f"kept the registry and server log in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
