"""Training on one GPU: lorafleet against PEFT (LoRA) and PEFT + bitsandbytes (QLoRA), with and without Liger.

`python bench/train_throughput.py --gpu` runs it (flags: --shape, --steps, --warmup, --runs). The model is
random, Llama-3.2-1B-shaped (no weights needed), as `../shared/reference/peft_gpu_baseline.py` measures the
peers; every run trains the same LoRA (r16, α32, dropout 0 on all seven projections) with gradient
checkpointing, AdamW at lr 1e-4 (lorafleet with its recipe's warm-up and cosine decay), on the same
`--batch-size` × `--seq` rows in the same order:

    rows       support tickets joined into plain-text rows of `--seq` tokens (the bundled tokenizer; its ids
               are a subset of the shape's vocabulary), loss on every token: lorafleet's tokenization of
               them (`data.format: text`), handed to the peers batch by batch
    lorafleet  `lorafleet.training.train` as `lorafleet train` runs it: bf16 autocast, Liger's RMSNorm,
               RoPE and SwiGLU kernels where liger-kernel is installed (`training.liger_kernels`), the loss's
               head in slices (`training/loss.py`); `-qlora`: `quantization.method: nf4`
    peft       the reference's loop: `get_peft_model`, `model(input_ids, labels).loss`, AdamW; `-qlora`:
               the base loaded through transformers' `BitsAndBytesConfig` (NF4, double quantization, bf16
               compute); `-liger`: `apply_liger_kernel_to_llama` with its fused linear cross-entropy
    tokens/s   over the steps after `--warmup` (lorafleet: from its per-step log; peers: timed with the GPU
               synchronised)
    peak       `torch.cuda.max_memory_allocated` of the run's own process, model load included (on a CPU:
               peak RSS)
    estimate   `lorafleet estimate`'s total for the same shape, method, batch, length and checkpointing

Each run is a fresh spawned process. Results go under `gpu` in bench/results/train_throughput.json, beside
the CPU comparison: per run its figures, and `tokens_per_s_ratio_vs_peft`, `peak_memory_ratio_vs_peft`
(lorafleet over plain PEFT, per method), the same against PEFT + Liger, and `estimate_error` (estimate over
the measured peak, − 1).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, dict[str, int]] = {
    "llama-1b": {  # Llama-3.2-1B, as the reference measures it
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
    "tiny": {  # a check of the bench itself on a CPU
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128256,
    },
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUNS = ("lorafleet-lora", "peft-lora", "peft-liger-lora", "lorafleet-qlora", "peft-qlora", "peft-liger-qlora")
METHODS = ("lora", "qlora")  # each run's name ends in its method
LEARNING_RATE = 1e-4
GPU_ARGS = ("shape", "seq", "batch_size", "steps", "warmup", "runs", "device")  # kept with the results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--gpu: the one-GPU comparison")
    group.add_argument("--gpu", action="store_true", help="run the GPU comparison instead of the CPU one")
    group.add_argument("--shape", choices=tuple(SHAPES), default="llama-1b", help="model shape (llama-1b)")
    group.add_argument("--seq", type=int, default=2048, help="tokens per row (2048)")
    group.add_argument("--warmup", type=int, default=3, help="steps left out of tokens/s (3, at least 1)")
    group.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="runs, in order")
    group.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: check the bench")
    group.add_argument(
        "--tokenizer", help="a directory holding the tokenizer (default: the bundled model's, converted once)"
    )


def load_tokenizer(source: str | None) -> Any:
    """The tokenizer of directory `source` (tokenizer files only will do), or of the bundled model
    (converted on first use)."""
    from transformers import AutoTokenizer

    from lorafleet.models.bundled import pull_model

    return AutoTokenizer.from_pretrained(source or str(pull_model("default")))


def write_model(shape: str, folder: Path, tokenizer: Any) -> Path:
    """A random `shape` Llama in bf16 with `tokenizer`, saved to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_rows(folder: Path, rows: int, seq: int, tokenizer: Any) -> Path:
    """`rows` plain-text rows of at least `seq` tokens each, support tickets joined, as train.jsonl."""
    from lorafleet.data.support_tickets import write_example_dataset

    train, _ = write_example_dataset(folder / "tickets", train_rows=1000, test_rows=1)
    tickets = [json.loads(line) for line in train.read_text().splitlines()]
    texts = [f"{t['prompt']}\n{t['completion']}" for t in tickets]
    out, parts, count, index = [], [], 0, 0
    while len(out) < rows:
        text = texts[index % len(texts)]
        index += 1
        parts.append(text)
        count += len(tokenizer(text)["input_ids"])
        if count > seq:
            out.append({"text": "\n\n".join(parts)})
            parts, count = [], 0
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in out))
    return path


def recipe(args: argparse.Namespace, model_dir: Path, data: Path, work: Path, method: str) -> dict[str, Any]:
    """The default recipe turned into the reference's setting."""
    import yaml

    from lorafleet.training.config import parse_config
    from train_throughput import RECIPE

    values = yaml.safe_load(RECIPE.read_text())
    values["model"] = {"name": str(model_dir), "device": args.device}
    values["lora"] |= {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS}
    values["quantization"] = {"method": "nf4" if method == "qlora" else "none"}
    values["data"] = {
        "path": str(data),
        "format": "text",
        "max_length": args.seq,
        "validation_fraction": 0.0,
        "packing": False,
    }
    values["training"] |= {
        "max_steps": args.warmup + args.steps,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": LEARNING_RATE,
        "gradient_checkpointing": True,
        "checkpoint_steps": 0,
    }
    values["eval"] = {"metric": "none", "compare_base": False}
    values["output"] = {"name": "gpu-bench", "run_dir": str(work / "run"), "overwrite": True}
    parse_config(values, source="bench/train_gpu.py")  # fail here, not in a child
    return values


def run_lorafleet(config: dict[str, Any], home: str, warmup: int) -> dict[str, Any]:
    import os

    os.environ["LORAFLEET_HOME"] = home
    from lorafleet.training import train
    from lorafleet.training.config import parse_config
    from lorafleet.training.report import read_metrics

    result = train(parse_config(config), show_progress=False, log=lambda _: None)
    steps = [m for m in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in m]
    seconds = [m["tokens"] / m["tokens_per_second"] for m in steps]  # the loop's clock at each step's end
    tokens = steps[-1]["tokens"] - steps[warmup - 1]["tokens"]
    return {
        "tokens_per_s": tokens / (seconds[-1] - seconds[warmup - 1]),
        "peak_mb": result.summary["peak_memory_mb"],
        "losses": [m["loss"] for m in steps],
    }


def run_peer(
    name: str, model_dir: str, rows: list[list[int]], batch: int, warmup: int, device: str
) -> dict[str, Any]:
    """The reference's PEFT loop on the same rows; `-qlora` through bitsandbytes, `-liger` with Liger."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if "-liger" in name:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=True)
    options: dict[str, Any] = {"dtype": torch.bfloat16}
    if name.endswith("-qlora"):
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        options["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **options)
    if "quantization_config" not in options:  # a 4-bit model is placed by its device_map and cannot move
        model = model.to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    batches = [torch.tensor(rows[i : i + batch], device=device) for i in range(0, len(rows), batch)]
    losses = []
    for index, ids in enumerate(batches):
        if index == warmup:
            _synchronize(device)
            started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss  # a bf16 base, PEFT's fp32 adapter: as the reference
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    _synchronize(device)
    tokens = sum(ids.numel() for ids in batches[warmup:])
    return {
        "tokens_per_s": tokens / (time.perf_counter() - started),
        "peak_mb": _peak_mb(device),
        "losses": losses,
    }


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def estimate_mb(model_dir: Path, args: argparse.Namespace, method: str) -> float:
    from lorafleet.training.estimate import ModelShape, estimate_memory

    estimate = estimate_memory(
        ModelShape.from_path(model_dir),
        method=method,  # type: ignore[arg-type]
        batch_size=args.batch_size,
        seq_length=args.seq,
        lora_r=16,
        lora_targets=TARGETS,
        gradient_checkpointing=True,
    )
    return estimate.total / 2**20


def main(args: argparse.Namespace, results_path: Path) -> None:
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from rich.console import Console
    from rich.table import Table

    from train_throughput import step_rows

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here (use --device cpu --shape tiny to check the bench)")
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit(f"--warmup and --steps must be at least 1 (got {args.warmup} and {args.steps})")
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="train-gpu-") as tmp:
        work = Path(tmp)
        tokenizer = load_tokenizer(args.tokenizer)
        model_dir = write_model(args.shape, work / "model", tokenizer)
        data = write_rows(work / "data", (args.warmup + args.steps) * args.batch_size, args.seq, tokenizer)
        configs = {method: recipe(args, model_dir, data, work, method) for method in METHODS}
        estimates = {method: estimate_mb(model_dir, args, method) for method in METHODS}
        rows = [row["input_ids"] for row in step_rows(configs["lora"])]  # the data is the methods' same
        for name in args.runs:
            method = name.rsplit("-", 1)[1]
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                if name.startswith("lorafleet"):
                    future = pool.submit(run_lorafleet, configs[method], str(work / "home"), args.warmup)
                else:
                    future = pool.submit(
                        run_peer, name, str(model_dir), rows, args.batch_size, args.warmup, args.device
                    )
                try:
                    result = future.result()
                except Exception as err:  # one failure (a missing extra) must not hide the other runs
                    print(f"{name}: failed: {err!r}"[:400])
                    continue
            result["estimate_mb"] = estimates[method]
            figures[name] = result
            print(
                f"{name}: {result['tokens_per_s']:.0f} tokens/s, peak {result['peak_mb']:.0f} MB "
                f"(estimate {result['estimate_mb']:.0f}), loss {statistics.fmean(result['losses'][-4:]):.3f}"
            )
    gpu: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": {key: vars(args)[key] for key in GPU_ARGS},
        "runs": figures,
    }
    table = Table(title=f"{args.shape}, LoRA r16 all-linear, {args.batch_size} × {args.seq}, checkpointing")
    for column in ("run", "tokens/s", "vs PEFT", "vs PEFT+Liger", "peak MB", "vs PEFT", "estimate error"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, result in figures.items():
        method = name.rsplit("-", 1)[1]
        ratios = {}
        for peer in (f"peft-{method}", f"peft-liger-{method}"):
            if peer in figures:
                ratios[peer] = (
                    result["tokens_per_s"] / figures[peer]["tokens_per_s"],
                    result["peak_mb"] / figures[peer]["peak_mb"],
                )
        result["estimate_error"] = result["estimate_mb"] / result["peak_mb"] - 1
        if name.startswith("lorafleet"):
            for peer, (speed, memory) in ratios.items():
                suffix = "" if peer == f"peft-{method}" else "_liger"
                gpu[f"{method}_tokens_per_s_ratio_vs_peft{suffix}"] = speed
                gpu[f"{method}_peak_memory_ratio_vs_peft{suffix}"] = memory
            gpu[f"{method}_estimate_error"] = result["estimate_error"]
        plain, liger = ratios.get(f"peft-{method}"), ratios.get(f"peft-liger-{method}")
        table.add_row(
            name,
            f"{result['tokens_per_s']:.0f}",
            f"{plain[0]:.2f}×" if plain else "",
            f"{liger[0]:.2f}×" if liger else "",
            f"{result['peak_mb']:.0f}",
            f"{plain[1]:.2f}×" if plain else "",
            f"{result['estimate_error']:+.1%}",
        )
    Console().print(table)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["gpu"] = gpu
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_path} (gpu)")
