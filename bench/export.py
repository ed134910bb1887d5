"""Edge export of the demo adapter merged into the default model: every variant run by its real runtime
(llama-cpp-python for GGUF, ONNX Runtime for ONNX) beside the merged PyTorch model, in one run.

    python bench/export.py [--adapter DIR] [--check-tokens 256] [--eval-rows 100] [--threads 2]

The adapter is `--adapter`, else the demo's (`configs/default.yaml` on the bundled support tickets,
trained here first into a temporary folder when `$LORAFLEET_HOME/adapters/support-tickets` is missing).
`lorafleet export` writes GGUF f16, q8_0, q4_0, q4_mix (Q4_1 where the adapter left the base alone, Q5_0
where it changed it) and lora (the adapter alone, applied by llama.cpp to the f16 base), ONNX fp32 and
int8, and q4_mix_mobile_cpu (`--quant q4_mix --target mobile_cpu`: q4_mix fitted to that profile's size
budget). Then, against the merged PyTorch model (PEFT's merge_and_unload):

    max_abs_logit_diff   max |Δlogit| over every position of held-out prompts and PyTorch's greedy answers
                         to them (at least `--check-tokens` answer positions), llama.cpp with its default
                         f16 KV cache
    top1_agreement       share of those `--check-tokens` answer positions where the export's arg-max is
                         PyTorch's (teacher-forced: both see PyTorch's prefix)
    mean_kl              mean KL(PyTorch ‖ export) of the next-token distributions on those positions, nats
    tokens_per_s         greedy decoding of 64 tokens after a held-out prompt, one at a time (the ratio is
                         against PyTorch's generate() on the same prompt)
    f16_max_abs_logit_diff_same_weights     the f16 file against PyTorch holding the same f16-rounded
                         weights, llama.cpp's KV cache in f32: the file's own error, without f16's rounding
    lora_max_abs_logit_diff_vs_merged_f16   the lora file on the f16 base against the merged f16 file,
                         both in llama.cpp (f32 KV cache): the issue's lora figure
    f16_weight_rounding_max_abs_logit_diff   no runtime: PyTorch (fp32 arithmetic) on the f16-rounded
                         merged weights against the merged model, the floor under the f16 figure; and
                         lora_on_f16_base_vs_rounded_merge_…, the f16 base plus the fp32 LoRA against the
                         f16-rounded merge, the floor under the lora figure
    verdicts             each export against each device profile (size, speed on this machine); the one
                         kept per profile is the most faithful that fits (lowest mean_kl, then size)
    field accuracy       greedy, on `--eval-rows` held-out tickets, of PyTorch and of each profile's kept
                         export; the goal is on mobile_cpu's (the smallest device): within 2 points

Goals (the issue's, each printed PASS or FAIL): f16 max |Δlogit| ≤ 1e-2 (shown both against fp32 PyTorch
and against PyTorch on the same f16 weights), q8_0 top-1 ≥ 99%, q4_0 and q4_mix ≥ 95%, the lora on the
f16 base equal to the merged f16 within 1e-2, ONNX fp32 ≤ 1e-3, int8 top-1 ≥ 95%, mobile_cpu's export
within 2 points of field accuracy. Results in `bench/results/export.json` with flat keys per export
(`q8_0_top1_agreement`, `q8_0_size_mb`, `q8_0_tokens_per_s`, `f16_max_abs_logit_diff`, `onnx_int8_…`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchkit import lorafleet_command, train_recipe
from lorafleet.export.checks import Reference, agreement, reference_answers
from lorafleet.export.exporter import ExportReport, export_adapter, f16_weights, relogit
from lorafleet.export.plan import ExportPlan
from lorafleet.export.profiles import Measured, choose, load_profiles, verdict, verdict_word
from lorafleet.export.runtime import EdgeRuntime, tokens_per_second
from lorafleet.home import lorafleet_home
from lorafleet.training.metrics import json_field_scores
from serve_load import machine_info

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = "You turn support tickets into JSON records."
SPEED_TOKENS = 64
EXPORTS = (  # format, quant, target: what `lorafleet export` is asked for, each into its own folder
    ("gguf", "all", None),
    ("onnx", "all", None),
    ("gguf", "q4_mix", "mobile_cpu"),  # q4_mix fitted to mobile_cpu's size budget
)
GOALS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "f16 max |Δlogit| ≤ 1e-2 (against fp32 PyTorch)": lambda r: r["f16_max_abs_logit_diff"] <= 1e-2,
    "f16 max |Δlogit| ≤ 1e-2 (PyTorch on the same f16 weights)": lambda r: (
        r["f16_max_abs_logit_diff_same_weights"] <= 1e-2
    ),
    "q8_0 top-1 ≥ 99%": lambda r: r["q8_0_top1_agreement"] >= 0.99,
    "q4_0 top-1 ≥ 95%": lambda r: r["q4_0_top1_agreement"] >= 0.95,
    "q4_mix top-1 ≥ 95%": lambda r: r["q4_mix_top1_agreement"] >= 0.95,
    "q4_mix fitted to mobile_cpu top-1 ≥ 95%": lambda r: r["q4_mix_mobile_cpu_top1_agreement"] >= 0.95,
    "lora on the f16 base = merged f16 ≤ 1e-2": lambda r: r["lora_max_abs_logit_diff_vs_merged_f16"] <= 1e-2,
    "onnx fp32 ≤ 1e-3": lambda r: r["onnx_fp32_max_abs_logit_diff"] <= 1e-3,
    "onnx int8 top-1 ≥ 95%": lambda r: r["onnx_int8_top1_agreement"] >= 0.95,
    "mobile_cpu export's field accuracy within 2 points": lambda r: abs(r["field_accuracy_gap"]) <= 0.02,
}
console = Console()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--adapter", type=Path, help="Adapter directory (default: the demo's, trained if missing)."
    )
    parser.add_argument(
        "--check-tokens", type=int, default=256, help="Answer tokens the agreement is measured on."
    )
    parser.add_argument(
        "--eval-rows", type=int, default=100, help="Held-out tickets scored by field accuracy."
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="Threads of every runtime and torch."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-export-") as folder:
        work = Path(folder)
        data = work / "data"
        subprocess.run([*lorafleet_command(), "data", "example", str(data)], check=True, capture_output=True)
        adapter = args.adapter or demo_adapter(work, data)
        exports: dict[str, ExportReport] = {}
        export_seconds: dict[str, float] = {}
        for format, quant, target in EXPORTS:
            folder = format if target is None else f"{format}-{target}"
            plan = ExportPlan.parse(format, quant, target, check_tokens=0, threads=args.threads)
            tick = time.perf_counter()
            exports[folder] = export_adapter(adapter, work / folder, plan, say=console.print)
            export_seconds[folder] = time.perf_counter() - tick
        results = measure(args, adapter, data, work, exports)
    results.update(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        export_seconds=export_seconds,
        seconds=time.time() - started,
    )
    results["goals"] = {name: bool(check(results)) for name, check in GOALS.items()}
    report(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS / 'export.json'}")
    return 0 if all(results["goals"].values()) else 1


def demo_adapter(work: Path, data: Path) -> Path:
    """The demo's adapter from $LORAFLEET_HOME, or trained now with the demo's recipe (no scoring)."""
    existing = lorafleet_home() / "adapters" / "support-tickets"
    if (existing / "adapter_model.safetensors").is_file():
        return existing
    console.print("training the demo adapter (configs/default.yaml) …")
    return train_recipe(
        ROOT / "configs" / "default.yaml", "support-tickets", work, data={"path": str(data / "train.jsonl")}
    )


def measure(
    args: argparse.Namespace, adapter: Path, data: Path, work: Path, exports: dict[str, ExportReport]
) -> dict[str, Any]:
    from lorafleet.adapters import load_adapter
    from lorafleet.data.formats import read_examples, with_system_prompt
    from lorafleet.data.tokenize import render_chat
    from lorafleet.models import load_base

    base, tokenizer = load_base("default", device="cpu", dtype="float32")
    merged = load_adapter(base, adapter).merge_and_unload()
    rows = read_examples(data / "test.jsonl", max_rows=args.eval_rows).examples
    prompts = [
        list(
            tokenizer(
                render_chat(
                    with_system_prompt(row, SYSTEM_PROMPT).prompt_messages, tokenizer, generation=True
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for row in rows
    ]
    references = reference_answers(merged, tokenizer, prompts, args.check_tokens)
    torch_speed = torch_tokens_per_second(merged, prompts[0])
    results: dict[str, Any] = {"torch_tokens_per_s": torch_speed, "checked_positions": positions(references)}
    profiles = load_profiles()
    measured = {}
    runtimes: dict[str, Callable[..., EdgeRuntime]] = {}
    for folder, export in exports.items():
        for variant in export.variants:
            key = variant.name.removeprefix("gguf-").replace("-", "_")
            key += f"_{export.target}" if export.target else ""
            runtimes[key] = runtime_factory(
                export.format, work / folder / variant.file, work, args.threads, lora=key == "lora"
            )
            runtime = runtimes[key]()
            try:
                figures = agreement(runtime, references)
                speed = tokens_per_second(runtime, prompts[0], SPEED_TOKENS)
            finally:
                runtime.close()
            results.update(
                {
                    f"{key}_size_mb": variant.size_bytes / 1e6,
                    f"{key}_max_abs_logit_diff": figures.max_abs_logit_diff,
                    f"{key}_top1_agreement": figures.top1_agreement,
                    f"{key}_mean_kl": figures.mean_kl,
                    f"{key}_tokens_per_s": speed,
                    f"{key}_speed_vs_torch": speed / torch_speed,
                }
            )
            if key != "lora":  # the lora file runs on no device alone
                measured[key] = Measured(
                    key, variant.size_bytes / 1e6, 1000 / speed, figures.top1_agreement, figures.mean_kl
                )
    rounded = relogit(f16_weights(merged), references)  # PyTorch on the f16-rounded merged weights
    results.update(same_weights(runtimes, rounded, references))
    results.update(rounding_floor(rounded, adapter, references))
    results["verdicts"] = [
        verdict(name, budget, m).as_dict() for name, budget in profiles.items() for m in measured.values()
    ]
    kept = {name: choose(name, budget, list(measured.values())).name for name, budget in profiles.items()}
    references_text = [row.reference or "" for row in rows]
    eos = tokenizer.eos_token_id
    torch_answers = [decode(tokenizer, torch_greedy(merged, tokenizer, p, 64), eos) for p in prompts]
    accuracy = {"torch": json_field_scores(torch_answers, references_text).field_accuracy}
    for key in sorted(set(kept.values())):
        runtime = runtimes[key]()
        try:
            answers = [decode(tokenizer, runtime.greedy(p, 64), eos) for p in prompts]
        finally:
            runtime.close()
        accuracy[key] = json_field_scores(answers, references_text).field_accuracy
    edge = kept["mobile_cpu"]  # the best fit of the smallest device
    results.update(
        kept_per_profile=kept,
        field_accuracy=accuracy,
        edge_export=edge,
        field_accuracy_torch=accuracy["torch"],
        field_accuracy_edge=accuracy[edge],
        field_accuracy_gap=accuracy[edge] - accuracy["torch"],
        eval_rows=len(rows),
    )
    return results


def same_weights(
    runtimes: dict[str, Callable[..., EdgeRuntime]], rounded: list[Reference], references: list[Reference]
) -> dict[str, float]:
    """The lossless GGUF figures with llama.cpp's KV cache in f32: the f16 file against PyTorch holding
    the same f16-rounded weights, and (the issue's lora figure) the lora on the f16 base against the
    merged f16."""
    figures: dict[str, float] = {}
    merged_f16 = runtimes["f16"](kv_cache="f32")
    lora = runtimes["lora"](kv_cache="f32")
    try:
        figures["f16_max_abs_logit_diff_same_weights"] = agreement(merged_f16, rounded).max_abs_logit_diff
        merged_logits = [Reference(r.ids, r.start, merged_f16.logits(r.ids)) for r in references]
        lora_figures = agreement(lora, merged_logits)
        figures["lora_max_abs_logit_diff_vs_merged_f16"] = lora_figures.max_abs_logit_diff
        figures["lora_top1_agreement_vs_merged_f16"] = lora_figures.top1_agreement
    finally:
        merged_f16.close()
        lora.close()
    return figures


def rounding_floor(rounded: list[Reference], adapter: Path, references: list[Reference]) -> dict[str, float]:
    """What storing the weights in f16 does by itself, in PyTorch's fp32 arithmetic: the merged model
    against its f16-rounded copy (`rounded`; under the f16 file's figure in any runtime), and the f16 base
    with the fp32 LoRA merged in against the f16-rounded merge (under the lora file's figure against the
    merged f16)."""
    from lorafleet.adapters import load_adapter
    from lorafleet.models import load_base

    def worst(ours: list[Reference], theirs: list[Reference]) -> float:
        return max(float(abs(a.logits - b.logits).max()) for a, b in zip(ours, theirs, strict=True))

    base, _ = load_base("default", device="cpu", dtype="float32")
    lora_on_f16 = relogit(f16_weights(load_adapter(base, adapter)).merge_and_unload(), references)
    return {
        "f16_weight_rounding_max_abs_logit_diff": worst(rounded, references),
        "lora_on_f16_base_vs_rounded_merge_max_abs_logit_diff": worst(lora_on_f16, rounded),
    }


def runtime_factory(
    format: str, path: Path, work: Path, threads: int, *, lora: bool
) -> Callable[..., EdgeRuntime]:
    """A way to open the export in its runtime (a GGUF's with `kv_cache=` as an option)."""
    if format == "onnx":
        from lorafleet.export.onnx_runtime import OnnxRuntime

        return lambda: OnnxRuntime(path, threads=threads)
    from lorafleet.export.gguf_runtime import GgufRuntime

    if not lora:
        return lambda kv_cache="f16": GgufRuntime(path, threads=threads, kv_cache=kv_cache)
    base_f16 = work / "base-f16.gguf"
    if not base_f16.is_file():
        from lorafleet.export.gguf_model import write_gguf_model
        from lorafleet.models import load_base
        from lorafleet.models.loading import source_gguf

        base, tokenizer = load_base("default", device="cpu", dtype="float32")
        write_gguf_model(base, tokenizer, base_f16, quant="f16", source_gguf=source_gguf("default"))
    return lambda kv_cache="f16": GgufRuntime(base_f16, lora=path, threads=threads, kv_cache=kv_cache)


def positions(references: list[Reference]) -> int:
    return sum(len(r.ids) for r in references)


@torch.inference_mode()
def torch_greedy(model: Any, tokenizer: Any, prompt: list[int], new_tokens: int) -> list[int]:
    output = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return list(output[0, len(prompt) :].tolist())


def torch_tokens_per_second(model: Any, prompt: list[int]) -> float:
    """PyTorch's generate() speed on `prompt`, `SPEED_TOKENS` tokens without stopping at EOS."""
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            torch.tensor([prompt]), max_new_tokens=SPEED_TOKENS, min_new_tokens=SPEED_TOKENS, do_sample=False
        )
    return SPEED_TOKENS / (time.perf_counter() - started)


def decode(tokenizer: Any, ids: list[int], eos: int) -> str:
    return str(tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids, skip_special_tokens=True))


def report(results: dict[str, Any]) -> None:
    table = Table(title=f"edge export of the demo adapter ({results['machine']['cpu_model']})")
    for column in ("export", "MB", "max |Δlogit|", "top-1", "KL", "tokens/s", "× PyTorch"):
        table.add_column(column, justify="left" if column == "export" else "right")
    for key in ("f16", "q8_0", "q4_0", "q4_mix", "q4_mix_mobile_cpu", "lora", "onnx_fp32", "onnx_int8"):
        if f"{key}_size_mb" in results:
            table.add_row(
                key,
                f"{results[f'{key}_size_mb']:.3f}",
                f"{results[f'{key}_max_abs_logit_diff']:.2e}",
                f"{results[f'{key}_top1_agreement']:.1%}",
                f"{results[f'{key}_mean_kl']:.2e}",
                f"{results[f'{key}_tokens_per_s']:.1f}",
                f"{results[f'{key}_speed_vs_torch']:.2f}",
            )
    table.add_row("PyTorch (merged)", "", "", "", "", f"{results['torch_tokens_per_s']:.1f}", "1.00")
    console.print(table)
    fits: dict[str, list[str]] = {}
    for v in results["verdicts"]:
        fits.setdefault(v["profile"], []).append(f"{v['export']} {verdict_word(v)}")
    for profile, marks in fits.items():
        console.print(f"{profile}: {', '.join(marks)}")
    console.print(
        f"f16 against PyTorch on the same f16 weights (f32 KV cache): max |Δlogit| "
        f"{results['f16_max_abs_logit_diff_same_weights']:.2e}; lora on the f16 base against the merged f16: "
        f"{results['lora_max_abs_logit_diff_vs_merged_f16']:.2e}"
    )
    console.print(
        "storing the weights in f16 alone, in PyTorch's fp32 arithmetic: max |Δlogit| "
        f"{results['f16_weight_rounding_max_abs_logit_diff']:.2e} (merged against its f16 copy), "
        f"{results['lora_on_f16_base_vs_rounded_merge_max_abs_logit_diff']:.2e} (f16 base + LoRA against the "
        "f16 merge): no f16 file meets 1e-2 on this model, in any runtime"
    )
    kept = ", ".join(f"{p} → {k}" for p, k in results["kept_per_profile"].items())
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in results["field_accuracy"].items())
    console.print(f"kept per profile: {kept}")
    console.print(f"held-out field accuracy on {results['eval_rows']} tickets: {accuracy}")
    for name, met in results["goals"].items():
        console.print(f"{'PASS' if met else 'FAIL'}  {name}")


if __name__ == "__main__":
    sys.exit(main())
