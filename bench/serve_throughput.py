"""Serving throughput with many adapters: lorafleet's engine against PEFT, on one mixed workload, in one run.

Workload: `--requests` short varied prompts (no chat template, so prompts stay 5-15 tokens), request i
using adapter i mod N for N in `--adapters` (random LoRA adapters, r=16, α=32 on q/k/v/o_proj, saved to a
temporary directory). Greedy; every request generates exactly `--max-tokens` tokens (the engine with
`ignore_eos`, transformers with `min_new_tokens`), so generated tokens/s compares like with like.

Systems, each timed end to end on the same requests, in `--rounds` interleaved rounds (the tables show the
median run and every round's tokens/s; ratios are the median of ratios within a round, since a shared
machine's speed drifts by ±15% between rounds; PEFT switching, the slowest, runs once):
  lorafleet N        the engine, continuous batching (max batch `--max-batch`), N adapters in its slots
  lorafleet merged   the same engine serving one adapter merged into the base (no LoRA work at all)
  peft mixed N       `PeftModel.generate(..., adapter_names=[...])` over batches of `--max-batch`
                     requests in arrival order, every adapter loaded in one PeftModel
  peft switch N      `set_adapter(name)` then `generate` per adapter group (that adapter's requests
                     batched, up to `--max-batch`); capped at `--switch-cap` seconds, measured tokens/s

Also: the engine's time to first token and time per output token (p50/p95; every request submitted
at t=0, so TTFT includes queueing behind earlier requests), and adapter cold load: `AdapterCache.get`
of a fresh cache (disk or OS page cache → CPU tier) and the copy into the engine's slots, p50 over
`--cold-samples` samples. Adapters are put into the engine's slots once before timing throughput.

Run: `LORAFLEET_HOME=... .venv/bin/python bench/serve_throughput.py` (`--model tiny` for a smoke run;
`--model llama-1b-random --device cuda --adapters 1,8,32,128 --requests 256` on a GPU). Prints a table
and writes `bench/results/serve_throughput.json` (`serve_throughput_<model>_<device>.json` for others).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lorafleet.adapters import BaseIdentity, LoraSettings, attach, base_identity, save_adapter
from lorafleet.models import load_base, tiny_model
from lorafleet.serving.cache import AdapterCache, DirectorySource, linear_shapes
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings, encode_prompt
from lorafleet.serving.kv import left_pad
from lorafleet.serving.requests import Completion, Request

RESULTS = Path(__file__).parent / "results"
Tokenizer = PreTrainedTokenizerBase
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "Give me a name for a cat.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet briefly.",
    "How do I boil an egg?",
    "Suggest a title for a blog post about tea.",
    "What does a compiler do?",
    "Tell me a fun fact about octopuses.",
    "Describe autumn in five words.",
    "What is 12 times 7?",
    "Recommend a book for a long flight.",
    "Write a limerick about a robot.",
]


def load_model(name: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base: the bundled default (fp32), a tiny random llama, or a Llama-3.2-1B-shaped random model."""
    if name == "tiny":
        tiny, byte_tokenizer = tiny_model("llama", hidden_size=64, intermediate_size=128)
        return tiny.to(torch.device(device)), byte_tokenizer
    if name == "llama-1b-random":
        _, tokenizer = load_base("default", device="cpu", dtype="float32")
        config = LlamaConfig(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)
        model.config.name_or_path = "llama-1b-random"
        return model.eval(), tokenizer
    return load_base(name, device=device, dtype="float32")


def make_adapters(base: PreTrainedModel, count: int, folder: Path) -> dict[str, Path]:
    """`count` random r=16 adapters on q/k/v/o: one PEFT attach, its LoRA weights re-drawn per adapter."""
    peft_model = attach(
        copy.deepcopy(base), LoraSettings(r=16, alpha=32, target_modules=TARGETS, init="random")
    )
    paths = {}
    for i in range(count):
        torch.manual_seed(1000 + i)
        for module in peft_model.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
                module.reset_parameters()  # the lora_A / lora_B layers (the base is frozen): B ≠ 0
        paths[f"a{i}"] = save_adapter(peft_model, folder / f"a{i}")
    del peft_model
    return paths


def workload(count: int, adapters: int, sampling: SamplingSettings) -> list[Request]:
    return [
        Request(prompt=PROMPTS[i % len(PROMPTS)], adapter=f"a{i % adapters}", sampling=sampling)
        for i in range(count)
    ]


def time_engine(engine: Engine, requests: list[Request]) -> tuple[float, list[Completion]]:
    start = time.perf_counter()
    completions = engine.generate(requests)
    return time.perf_counter() - start, completions


def peft_generate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_tokens: int,
    **kwargs: object,
) -> list[list[int]]:
    """Greedy `generate` of left-padded `prompts` in one batch: each row's exactly `max_tokens` new tokens."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
    return out[:, ids.shape[1] :].tolist()


def time_peft_mixed(
    model: PeftModel,
    tokenizer: Tokenizer,
    requests: list[Request],
    prompts: list[list[int]],
    batch: int,
    max_tokens: int,
) -> tuple[float, int, list[list[int]]]:
    """PEFT's mixed batches: `adapter_names` per row, `batch` requests at a time in arrival order."""
    start, outputs = time.perf_counter(), []
    for first in range(0, len(requests), batch):
        chunk = list(range(first, min(first + batch, len(requests))))
        names = [requests[i].adapter for i in chunk]
        outputs += peft_generate(
            model, tokenizer, [prompts[i] for i in chunk], max_tokens, adapter_names=names
        )
    return time.perf_counter() - start, sum(len(o) for o in outputs), outputs


def time_peft_switch(
    model: PeftModel,
    tokenizer: Tokenizer,
    requests: list[Request],
    prompts: list[list[int]],
    batch: int,
    max_tokens: int,
    cap: float,
) -> tuple[float, int, int]:
    """PEFT switching: `set_adapter` per adapter group, that group's requests batched; stops after `cap` s."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[request.adapter or ""].append(i)
    start, tokens, done = time.perf_counter(), 0, 0
    for name, members in groups.items():
        model.set_adapter(name)
        for first in range(0, len(members), batch):
            chunk = members[first : first + batch]
            tokens += sum(
                len(o) for o in peft_generate(model, tokenizer, [prompts[i] for i in chunk], max_tokens)
            )
            done += len(chunk)
        if time.perf_counter() - start > cap:
            break
    return time.perf_counter() - start, tokens, done


def cold_load(
    identity: BaseIdentity,
    source: DirectorySource,
    shapes: dict[str, tuple[int, int]],
    refs: list[str],
    engine: Engine,
    samples: int,
) -> dict[str, float]:
    """p50/p95 ms of a fresh `AdapterCache.get` (disk → CPU tier) and of the copy into the engine's slots."""
    disk, slot = [], []
    assert engine.slots is not None
    for i in range(samples):
        ref = refs[i % len(refs)]
        cache = AdapterCache(identity, source=source, module_shapes=shapes)
        start = time.perf_counter()
        loaded = cache.get(ref)
        disk.append((time.perf_counter() - start) * 1e3)
        engine.slots.evict(ref)
        start = time.perf_counter()
        engine.slots.acquire(ref, loaded)
        slot.append((time.perf_counter() - start) * 1e3)
        engine.slots.release(ref)
    return {
        "disk_p50_ms": statistics.median(disk),
        "disk_p95_ms": percentile(disk, 95),
        "slots_p50_ms": statistics.median(slot),
        "slots_p95_ms": percentile(slot, 95),
    }


def percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def agreement(ours: list[Completion], theirs: list[list[int]], eos: int | None) -> float:
    """Share of requests whose greedy tokens equal the peer's before our first EOS (the peer bans EOS)."""

    def before_eos(tokens: list[int]) -> int:
        return tokens.index(eos) if eos in tokens else len(tokens)

    same = [
        c.token_ids[: before_eos(c.token_ids)] == t[: before_eos(c.token_ids)]
        for c, t in zip(ours, theirs, strict=True)
    ]
    return sum(same) / len(ours)


def machine_info(device: str) -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "load_average_1min": os.getloadavg()[0],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def measure(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    """Set up the adapters and the four systems, then time each on the same workload."""
    base, tokenizer = load_model(args.model, args.device)
    paths = make_adapters(base, max(counts), Path(tempfile.mkdtemp(prefix="serve-bench-")))
    identity, shapes, source = base_identity(base), linear_shapes(base), DirectorySource(paths)
    sampling = SamplingSettings(max_tokens=args.max_tokens, chat=False, ignore_eos=True)
    prompts = [encode_prompt(tokenizer, p, chat=False)["input_ids"][0].tolist() for p in PROMPTS]
    room = max(64, max(counts))

    def new_engine(merged: str | None = None) -> Engine:
        return Engine.for_model(
            copy.deepcopy(base),
            tokenizer,
            source=source,
            max_adapters=room,
            max_batch=args.max_batch,
            max_slots=room,
            merged=merged,
        )

    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(paths["a0"]), adapter_name="a0").eval()
    for name in list(paths)[1:]:
        reference.load_adapter(str(paths[name]), adapter_name=name)
    engine, merged = new_engine(), new_engine(merged="a0")
    warm = SamplingSettings(max_tokens=2, chat=False, ignore_eos=True)
    engine.generate(workload(max(counts), max(counts), warm))  # every adapter into a slot
    merged.generate(workload(2, 1, warm))
    peft_generate(reference, tokenizer, prompts[:2], 2, adapter_names=["a0", "a1"])

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)  # system → one entry per round
    ttft: dict[int, list[float]] = defaultdict(list)
    tpot: dict[int, list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        seconds, completions = time_engine(merged, workload(args.requests, 1, sampling))
        runs["lorafleet merged"].append(run_entry(1, completions, seconds))
        for n in counts:
            requests = workload(args.requests, n, sampling)
            request_prompts = [prompts[i % len(PROMPTS)] for i in range(len(requests))]
            seconds, completions = time_engine(engine, requests)
            runs[f"lorafleet {n}"].append(run_entry(n, completions, seconds))
            ttft[n] += [c.time_to_first_token * 1e3 for c in completions if c.time_to_first_token is not None]
            tpot[n] += [
                c.time_per_output_token * 1e3 for c in completions if c.time_per_output_token is not None
            ]
            seconds, tokens, outputs = time_peft_mixed(
                reference, tokenizer, requests, request_prompts, args.max_batch, args.max_tokens
            )
            same = agreement(completions, outputs, tokenizer.eos_token_id)
            runs[f"peft mixed {n}"].append(
                {"adapters": n, "tokens": tokens, "seconds": seconds, "greedy_agreement_with_lorafleet": same}
            )
        print(f"  round {round_ + 1}/{args.rounds} measured", flush=True)
    if not args.skip_peft_switch:
        for n in counts:
            requests = workload(args.requests, n, sampling)
            request_prompts = [prompts[i % len(PROMPTS)] for i in range(len(requests))]
            seconds, tokens, done = time_peft_switch(
                reference,
                tokenizer,
                requests,
                request_prompts,
                args.max_batch,
                args.max_tokens,
                args.switch_cap,
            )
            runs[f"peft switch {n}"].append(
                {"adapters": n, "tokens": tokens, "seconds": seconds, "requests_done": done}
            )
        print("  measured PEFT switching", flush=True)
    for entries in runs.values():
        for entry in entries:
            entry["tokens_per_s"] = entry["tokens"] / entry["seconds"]
    latency = {
        str(n): {
            "ttft_p50_ms": statistics.median(ttft[n]),
            "ttft_p95_ms": percentile(ttft[n], 95),
            "tpot_p50_ms": statistics.median(tpot[n]),
            "tpot_p95_ms": percentile(tpot[n], 95),
        }
        for n in counts
    }
    cold = cold_load(identity, source, shapes, list(paths), engine, args.cold_samples)
    return {"runs": dict(runs), "rows": summary_rows(runs), "latency_ms": latency, "cold_load_ms": cold}


def run_entry(adapters: int, completions: list[Completion], seconds: float) -> dict[str, Any]:
    return {"adapters": adapters, "tokens": sum(c.completion_tokens for c in completions), "seconds": seconds}


def summary_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system: the run of median tokens/s (its tokens, seconds and notes), and every round's."""
    rows = []
    order = sorted(
        runs, key=lambda system: (system != "lorafleet merged", runs[system][0]["adapters"], system)
    )
    for system in order:
        entries = runs[system]
        ordered = sorted(entries, key=lambda entry: entry["tokens_per_s"])
        rows.append(
            ordered[(len(ordered) - 1) // 2]
            | {"system": system, "rounds_tokens_per_s": [entry["tokens_per_s"] for entry in entries]}
        )
    return rows


def judge(args: argparse.Namespace, counts: list[int], results: dict[str, Any]) -> None:
    """Add the ratios of each system to its peers and whether the issue's targets were met.

    Systems timed in the same round are compared round by round (the machine's speed drifts between
    rounds) and the median ratio is kept; PEFT switching, timed once, is compared with lorafleet's median.
    """
    runs = results["runs"]
    speed = {row["system"]: row["tokens_per_s"] for row in results["rows"]}
    top, cold = max(counts), results["cold_load_ms"]

    def per_round(ours: str, theirs: str) -> float:
        pairs = zip(runs[ours], runs[theirs], strict=True)
        return statistics.median(mine["tokens_per_s"] / peer["tokens_per_s"] for mine, peer in pairs)

    ratios = {
        f"lorafleet {n} / lorafleet merged": per_round(f"lorafleet {n}", "lorafleet merged") for n in counts
    }
    ratios |= {
        f"lorafleet {n} / peft mixed {n}": per_round(f"lorafleet {n}", f"peft mixed {n}") for n in counts
    }
    if not args.skip_peft_switch:
        ratios |= {
            f"lorafleet {n} / peft switch {n}": speed[f"lorafleet {n}"] / speed[f"peft switch {n}"]
            for n in counts
        }
    results["ratios"] = ratios
    results["targets"] = {
        f"lorafleet {top} ≥ 0.7 × lorafleet merged": ratios[f"lorafleet {top} / lorafleet merged"] >= 0.7,
        f"lorafleet {top} ≥ 3 × peft mixed {top}": ratios[f"lorafleet {top} / peft mixed {top}"] >= 3.0,
        "cold load p50 < 50 ms": cold["disk_p50_ms"] < 50,
    }


def report(console: Console, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Print the throughput table, the latency table, the ratios, cold load and the targets."""
    title = (
        f"Generated tokens/s: {args.requests} requests × {args.max_tokens} tokens, greedy, "
        f"max batch {args.max_batch}, {args.model} on {args.device}"
    )
    table = Table(title=title)
    for column in ("system", "adapters", "tokens", "seconds", "tokens/s", "× merged", "each round", "note"):
        table.add_column(column, justify="left" if column in ("system", "note") else "right")
    merged = next(row["tokens_per_s"] for row in results["rows"] if row["system"] == "lorafleet merged")
    for row in results["rows"]:
        note = ""
        if row.get("requests_done", args.requests) != args.requests:
            note = f"capped at {args.switch_cap:g} s: {row['requests_done']}/{args.requests} requests"
        if "greedy_agreement_with_lorafleet" in row:
            note = f"greedy tokens = lorafleet's in {row['greedy_agreement_with_lorafleet']:.0%} of requests"
        table.add_row(
            str(row["system"]),
            str(row["adapters"]),
            str(row["tokens"]),
            f"{row['seconds']:.1f}",
            f"{row['tokens_per_s']:.1f}",
            f"{row['tokens_per_s'] / merged:.2f}",
            " ".join(f"{speed:.0f}" for speed in row["rounds_tokens_per_s"]),
            note,
        )
    console.print(table)
    table = Table(title="lorafleet latency (ms; all requests submitted at t=0, so TTFT includes queueing)")
    for column in ("adapters", "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95"):
        table.add_column(column, justify="right")
    for n, values in results["latency_ms"].items():
        table.add_row(
            n, *(f"{values[k]:.0f}" for k in ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms"))
        )
    console.print(table)
    for name, ratio in results["ratios"].items():
        console.print(f"{name}: {ratio:.2f}×")
    cold = results["cold_load_ms"]
    console.print(
        f"adapter cold load (r16 on q,k,v,o), {args.cold_samples} samples: disk → CPU tier p50 "
        f"{cold['disk_p50_ms']:.1f} ms (p95 {cold['disk_p95_ms']:.1f}); CPU tier → slots p50 "
        f"{cold['slots_p50_ms']:.1f} ms (p95 {cold['slots_p95_ms']:.1f})"
    )
    for name, met in results["targets"].items():
        console.print(f"target {name}: {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default, tiny, llama-1b-random, or a model spec")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--requests", type=int, default=64, help="requests per system")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated by every request")
    parser.add_argument("--adapters", default="1,8,32", help="distinct adapters per run, comma-separated")
    parser.add_argument("--max-batch", type=int, default=32, help="engine max batch = PEFT batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-peft-switch", action="store_true", help="leave out PEFT adapter switching")
    parser.add_argument("--switch-cap", type=float, default=90.0, help="seconds per PEFT-switch run at most")
    parser.add_argument("--cold-samples", type=int, default=24, help="adapter cold loads timed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every system but PEFT switching")
    args = parser.parse_args()
    counts = [int(n) for n in args.adapters.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations raised inside PEFT
    console, started = Console(width=160), time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info(args.device)
    console.print(
        f"serve_throughput  {date}  {machine['cpu_model']}  {machine['cpu_count']} CPUs  "
        f"{machine['torch_threads']} threads  torch {machine['torch']}  {args.device}  "
        f"load average {machine['load_average_1min']:.1f}"
    )

    results = measure(args, counts)
    judge(args, counts, results)
    report(console, args, results)

    elapsed = time.perf_counter() - started
    suffix = "" if (args.model, args.device) == ("default", "cpu") else f"_{args.model}_{args.device}"
    out = RESULTS / f"serve_throughput{suffix}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"date": date, "machine": machine, "args": vars(args)}
    end = {"runtime_s": elapsed, "load_average_end": os.getloadavg()}
    out.write_text(json.dumps(meta | results | end, indent=2) + "\n")
    console.print(f"finished in {elapsed:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
