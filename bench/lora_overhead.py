"""What a LoRA adapter costs at inference on CPU, and what the base costs in memory per dtype.

1. Forward latency (median and p90 over `--repeats` runs after warm-up, `--batch` × `--seq-len` random
   tokens) of three fp32 copies of the bundled default base: plain, with a LoRA adapter (r=16, α=32 on
   q/k/v/o_proj, random init so B ≠ 0) unmerged, and with the same adapter merged by PEFT
   (`merge_adapter()`); each as a ratio to the plain base. The copies run interleaved, round by round,
   so a busy machine slows all three alike. The unmerged path adds, per adapted layer,

       y = W₀x + (α/r)·B(Ax),   A: r × in,  B: out × r

   i.e. two thin matmuls; merging folds (α/r)·BA into W₀, so the merged model should cost what the base does.
2. Memory of the base loaded in fp32, bf16 and NF4 (QLoRA base: fp32 load, then `quantize_nf4`), each
   in a fresh spawned process: the bytes of every parameter, buffer and NF4 quantization state (the main
   figure), and the process's RSS growth (secondary: it also counts allocator slack and the runtime's
   own buffers).

Run: `LORAFLEET_HOME=... .venv/bin/python bench/lora_overhead.py` (flags: --batch, --seq-len, --repeats,
--warmup, --threads; see --help). Prints two tables and writes `bench/results/lora_overhead.json`.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psutil
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers.utils import logging as hf_logging

from lorafleet.adapters import LoraSettings, attach
from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.models import load_base

RESULTS = Path(__file__).parent / "results" / "lora_overhead.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SETTINGS = LoraSettings(r=16, alpha=32, target_modules=TARGETS, init="random")
MB = 2**20
LOAD_SECONDS: list[float] = []  # how long a load of the already converted default model takes


def load_variants() -> dict[str, nn.Module]:
    """Three fp32 copies of the default base: plain, with the LoRA adapter unmerged, and with it merged.

    Both adapted copies draw their adapter after the same seed, so they hold the same A and B.
    """
    load_base("default", device="cpu", dtype="float32")  # converts the bundled GGUF if not done yet
    start = time.perf_counter()
    base, _ = load_base("default", device="cpu", dtype="float32")
    LOAD_SECONDS.append(time.perf_counter() - start)
    variants: dict[str, nn.Module] = {"base": base}
    for name in ("lora unmerged", "lora merged"):
        model, _ = load_base("default", device="cpu", dtype="float32")
        torch.manual_seed(0)
        variants[name] = attach(model, SETTINGS).eval()  # wraps `model`'s layers in place
    variants["lora merged"].merge_adapter()  # W₀ ← W₀ + (α/r)·BA in every adapted layer
    return variants


def measure_latency(batch: int, seq_len: int, repeats: int, warmup: int) -> dict[str, object]:
    """Time each variant's forward pass, interleaved round by round so load drift hits all alike."""
    variants = load_variants()
    names = list(variants)
    input_ids = torch.randint(0, variants["base"].config.vocab_size, (batch, seq_len))  # (B, T)
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for step in range(warmup + repeats):
            for name in names[step % 3 :] + names[: step % 3]:  # rotate who goes first
                start = time.perf_counter()
                outputs[name] = variants[name](input_ids=input_ids).logits  # (B, T, vocab)
                if step >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    rows = {
        name: {"median_ms": statistics.median(t), "p90_ms": statistics.quantiles(t, n=10)[-1]}
        for name, t in times.items()
    }
    for row in rows.values():
        row["ratio_to_base"] = row["median_ms"] / rows["base"]["median_ms"]
    unmerged, merged = outputs["lora unmerged"], outputs["lora merged"]
    return {
        "rows": rows,
        "adapter_changes_logits_by": (unmerged - outputs["base"]).abs().max().item(),
        "merged_vs_unmerged_max_abs_diff": (merged - unmerged).abs().max().item(),
    }


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter, buffer and bitsandbytes quant-state tensor (tied weights once)."""
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:  # NF4 with double quantization nests a second state for the absmax values
            tensors += [t for t in (state.absmax, state.code) if t is not None]
            state = getattr(state, "state2", None)
    unique = {t.data_ptr(): t.nbytes for t in tensors}
    return sum(unique.values())


def measure_memory(dtype: str) -> dict[str, float]:
    """Load the default base in `dtype` ('float32', 'bfloat16' or 'nf4') in this process; its memory in MB."""
    hf_logging.disable_progress_bar()
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    model, _ = load_base("default", device="cpu", dtype="bfloat16" if dtype == "bfloat16" else "float32")
    with torch.inference_mode():  # fp32 weights are a lazily paged-in mmap of the safetensors file: touch all
        for param in model.parameters():
            param.sum()
    if dtype == "nf4":
        quantize_nf4(model, compute_dtype=torch.float32)
    gc.collect()
    if platform.system() == "Linux":  # hand freed heap pages back to the OS so RSS shows what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"tensor_mb": tensor_bytes(model) / MB, "rss_growth_mb": (process.memory_info().rss - before) / MB}


def machine_info() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {
        "processor": platform.processor(),
        "cpu_model": cpu_model,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward pass")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per variant (≥ 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes per variant first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (p90 needs two timings)")
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations raised inside PEFT
    console = Console()
    started = time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    console.print(
        f"lora_overhead  {date}  {machine['cpu_model'] or machine['processor'] or machine['machine']}  "
        f"{machine['cpu_count']} CPUs  {machine['torch_threads']} torch threads  torch {machine['torch']}",
        soft_wrap=True,
    )
    if machine["load_average_1min"] > 0.5:
        console.print(
            f"[yellow]warning: load average {machine['load_average_1min']:.1f} before start; "
            "other processes share these CPUs, so latencies are inflated; --threads 1 suffers least"
        )

    latency = measure_latency(args.batch, args.seq_len, args.repeats, args.warmup)
    table = Table(title=f"Forward latency (fp32, {args.batch}×{args.seq_len} tokens, {args.repeats} runs)")
    for column in ("variant", "median ms", "p90 ms", "× base"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, row in latency["rows"].items():
        table.add_row(name, f"{row['median_ms']:.1f}", f"{row['p90_ms']:.1f}", f"{row['ratio_to_base']:.3f}")
    console.print(table)
    console.print(f"load_base('default') of the converted model: {LOAD_SECONDS[0]:.2f} s")
    console.print(
        f"adapter moves logits by up to {latency['adapter_changes_logits_by']:.3g}; "
        f"merged vs unmerged max |Δ| = {latency['merged_vs_unmerged_max_abs_diff']:.3g}"
    )

    memory: dict[str, dict[str, float]] = {}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for dtype in ("float32", "bfloat16", "nf4"):  # one fresh process each, one after the other
            memory[dtype] = pool.submit(measure_memory, dtype).result()
    table = Table(title="Base model memory (fresh process each)")
    for column in ("dtype", "tensor MB", "× fp32", "RSS growth MB"):
        table.add_column(column, justify="left" if column == "dtype" else "right")
    for dtype, row in memory.items():
        ratio = row["tensor_mb"] / memory["float32"]["tensor_mb"]
        table.add_row(dtype, f"{row['tensor_mb']:.1f}", f"{ratio:.3f}", f"{row['rss_growth_mb']:.1f}")
    console.print(table)

    elapsed = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = {"date": date, "machine": machine, "args": vars(args), "lora": SETTINGS.model_dump()}
    results |= {
        "latency": latency,
        "memory": memory,
        "load_seconds": LOAD_SECONDS[0],
        "runtime_s": elapsed,
        "load_average_end": os.getloadavg(),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"finished in {elapsed:.0f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
