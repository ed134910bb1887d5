"""Training throughput on the CPU: lorafleet's loop against HF `Trainer` + PEFT and TRL's `SFTTrainer`.

All train the same LoRA (r16, α32, dropout 0 on q/k/v/o_proj) on the same base (the bundled
SmolLM2-135M-Instruct by default) over the same rows of the support-ticket example task, in the same
order and batches, with the same AdamW, warmup + cosine schedule, clipping and steps:

    rows       the default recipe's (`configs/default.yaml`) tokenization of `--rows` generated tickets;
               lorafleet's epoch-0 batches (length-grouped, shuffled) are taken apart and handed to the
               peers in that order (`train_sampling_strategy="sequential"`), so each step sees the same
               tokens; the peers pad with their own collators (HF `DataCollatorForSeq2Seq`; TRL's
               completion-only loss from a `completion_mask` column, not packed, so batches match)
    precision  each trainer's default, as a user gets it: lorafleet's `mixed_precision: auto` (bf16
               autocast with the frozen base held in bf16 on a CPU with AVX512-BF16 or AMX, fp32
               elsewhere; the run records which), HF `Trainer` and TRL in fp32. `hf_trainer_bf16` is HF
               `Trainer` given `bf16=True` (its CPU autocast over the fp32 model), to show what the
               peer gets from the same instructions
    tokens/s   real (non-padding) tokens of the trained rows, prompt and answer, over the seconds of the
               training loop (lorafleet: its `train_seconds`; peers: `on_train_begin` → `on_train_end`),
               model load and data preparation left out for all
    loss       mean training loss (per labelled token) of the last `--last` steps
    peak RSS   the child process's peak resident set (`ru_maxrss`): each run is a fresh spawned process

Rounds are interleaved (lorafleet, HF, HF bf16, TRL, lorafleet, ...), so a busy machine slows all alike;
the ratios use the median of the rounds and are against `hf_trainer` (and `trl_sft`). Run:
`.venv/bin/python bench/train_throughput.py` (flags: --steps, --rounds, --only, see --help). Prints a
table and writes bench/results/train_throughput.json.

On a machine with a GPU, `--gpu` runs the one-GPU comparison instead (`bench/train_gpu.py`: lorafleet
against PEFT and PEFT + bitsandbytes, with and without Liger, on a random Llama-3.2-1B-shaped model) and
writes it under `gpu` in the same file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

import train_gpu
from serve_load import machine_info

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
RECIPE = Path(__file__).parent.parent / "configs" / "default.yaml"
RUNNERS = ("lorafleet", "hf_trainer", "hf_trainer_bf16", "trl_sft")


def recipe(args: argparse.Namespace, data_path: Path, model_dir: Path, work: Path) -> dict[str, Any]:
    """The default recipe, cut to the bench: no evaluation, no checkpoints, outputs under `work`."""
    import yaml

    from lorafleet.training.config import parse_config

    values = yaml.safe_load(RECIPE.read_text())
    values["model"] |= {"name": str(model_dir), "device": "cpu"}
    values["data"] |= {"path": str(data_path), "validation_fraction": 0.0}
    values["training"] |= {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "checkpoint_steps": 0,
    }
    values["eval"] = {"metric": "none", "compare_base": False}
    values["output"] |= {"run_dir": str(work / "run"), "overwrite": True}
    parse_config(values, source=str(RECIPE))  # fail here, not in a child
    return values


def step_rows(config: dict[str, Any]) -> list[dict[str, list[int]]]:
    """The rows of lorafleet's first `max_steps` batches, in order, as token ids and labels."""
    from lorafleet.data import prepare_data
    from lorafleet.models import load_tokenizer
    from lorafleet.training.config import parse_config
    from lorafleet.training.loop import epoch_batches

    parsed = parse_config(config)
    tokenizer = load_tokenizer(parsed.model.name)
    data = prepare_data(parsed.data, tokenizer)
    epoch = epoch_batches(parsed, data, tokenizer, 0)
    if len(epoch) < (parsed.training.max_steps or 0):
        raise SystemExit(f"--rows gives {len(epoch)} batches, fewer than --steps {parsed.training.max_steps}")
    rows = []
    for batch in epoch[: parsed.training.max_steps]:
        for ids, labels, mask in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            n = int(mask.sum())
            rows.append({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist()})
    return rows


def run_lorafleet(config: dict[str, Any], home: str) -> dict[str, Any]:
    """`lorafleet.training.train` on the recipe, as `lorafleet train` runs it."""
    os.environ["LORAFLEET_HOME"] = home  # the adapter is saved there, not in the user's home
    from lorafleet.training import train
    from lorafleet.training.config import parse_config
    from lorafleet.training.report import read_metrics

    result = train(parse_config(config), show_progress=False, log=lambda _: None)
    losses = [m["loss"] for m in read_metrics(result.run_dir / "metrics.jsonl")]
    summary = result.summary
    return _figures(summary["tokens"], summary["train_seconds"], losses, summary["mixed_precision"])


def run_peer(
    name: str, config: dict[str, Any], rows: list[dict[str, list[int]]], home: str
) -> dict[str, Any]:
    """HF `Trainer` + PEFT (`hf_trainer`, `hf_trainer_bf16`) or TRL's `SFTTrainer` (`trl_sft`) on the same
    rows in order, in fp32 unless the name ends in `_bf16`."""
    os.environ["LORAFLEET_HOME"] = home
    from datasets import Dataset
    from peft import get_peft_model

    from lorafleet.models import load_base
    from lorafleet.training.config import parse_config

    parsed = parse_config(config)
    training, lora = parsed.training, parsed.lora
    steps = training.max_steps or 0
    model, tokenizer = load_base(parsed.model.name, device="cpu", dtype="float32")
    torch.manual_seed(training.seed)
    peft_config = lora.to_peft()  # a plain PEFT `LoraConfig` with the recipe's settings
    common: dict[str, Any] = {
        "output_dir": str(Path(home) / name),
        "per_device_train_batch_size": training.batch_size,
        "max_steps": steps,
        "learning_rate": training.learning_rate,
        "lr_scheduler_type": training.lr_scheduler,
        "warmup_steps": round(training.warmup_ratio * steps),
        "weight_decay": training.weight_decay,
        "max_grad_norm": training.max_grad_norm,
        "bf16": name.endswith("_bf16"),
        "use_cpu": True,
        "seed": training.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "train_sampling_strategy": "sequential",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    clock = LoopClock()
    if name.startswith("hf_trainer"):
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        columns = {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
        columns["attention_mask"] = [[1] * len(ids) for ids in columns["input_ids"]]
        trainer: Any = Trainer(
            model=get_peft_model(model, peft_config),
            args=TrainingArguments(**common),
            train_dataset=Dataset.from_dict(columns),
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[clock],
        )
    else:
        from trl import SFTConfig, SFTTrainer

        columns = {
            "input_ids": [r["input_ids"] for r in rows],
            "completion_mask": [[int(label != -100) for label in r["labels"]] for r in rows],
        }
        sft = SFTConfig(**common, completion_only_loss=True, packing=False, max_length=parsed.data.max_length)
        trainer = SFTTrainer(
            model=model,
            args=sft,
            train_dataset=Dataset.from_dict(columns),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    precision = "bf16" if common["bf16"] else "no"
    return _figures(sum(len(r["input_ids"]) for r in rows), clock.seconds, losses, precision)


class LoopClock(TrainerCallback):
    """Times the training loop: `on_train_begin` → `on_train_end`."""

    seconds = 0.0

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, *_: Any, **__: Any) -> None:
        self.seconds = time.perf_counter() - self.started


def _figures(tokens: int, seconds: float, losses: list[float], precision: str) -> dict[str, Any]:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mixed_precision": precision,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "losses": losses,
        "peak_rss_mb": peak_kib / 1024,
    }


def run_child(
    name: str, config: dict[str, Any], rows: list[dict[str, list[int]]], home: str
) -> dict[str, Any]:
    """Run one trainer in a fresh spawned process (its own peak RSS, no state shared with the others)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        if name == "lorafleet":
            return pool.submit(run_lorafleet, config, home).result()
        return pool.submit(run_peer, name, config, rows, home).result()


def summarise(runs: dict[str, list[dict[str, Any]]], last: int) -> dict[str, dict[str, Any]]:
    """Median over rounds of tokens/s and peak RSS, and of the final loss (mean of the last steps)."""
    out = {}
    for name, rounds in runs.items():
        out[name] = {
            "tokens": rounds[0]["tokens"],
            "mixed_precision": rounds[0]["mixed_precision"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rounds),
            "final_loss": statistics.median(statistics.fmean(r["losses"][-last:]) for r in rounds),
        }
    return out


def print_table(summary: dict[str, dict[str, Any]], title: str) -> None:
    hf = summary["hf_trainer"]
    table = Table(title=title)
    for column in (
        "trainer",
        "precision",
        "tokens/s",
        "vs HF",
        "final loss",
        "vs HF",
        "peak RSS MB",
        "vs HF",
    ):
        table.add_column(column, justify="left" if column in ("trainer", "precision") else "right")
    for name, s in summary.items():
        table.add_row(
            name,
            {"no": "fp32"}.get(s["mixed_precision"], s["mixed_precision"]),
            f"{s['tokens_per_s']:.0f}",
            f"{s['tokens_per_s'] / hf['tokens_per_s']:.2f}×",
            f"{s['final_loss']:.4f}",
            f"{s['final_loss'] / hf['final_loss']:.3f}",
            f"{s['peak_rss_mb']:.0f}",
            f"{s['peak_rss_mb'] / hf['peak_rss_mb']:.2f}×",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (12; --gpu: 8)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (8; --gpu: 4)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the trainers")
    parser.add_argument("--rows", type=int, default=1000, help="generated training tickets")
    parser.add_argument("--last", type=int, default=4, help="steps averaged into the final loss")
    parser.add_argument("--only", nargs="+", choices=RUNNERS, default=list(RUNNERS), help="trainers to run")
    train_gpu.add_arguments(parser)
    args = parser.parse_args()
    if args.gpu:
        args.steps, args.batch_size = args.steps or 8, args.batch_size or 4
        train_gpu.main(args, RESULTS)
        return
    args.steps, args.batch_size = args.steps or 12, args.batch_size or 8

    from lorafleet.data.support_tickets import write_example_dataset
    from lorafleet.models.bundled import pull_model

    model_dir = pull_model("default")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        train_path, _ = write_example_dataset(work / "data", train_rows=args.rows, test_rows=1)
        config = recipe(args, train_path, model_dir, work)
        rows = step_rows(config)
        for round_index in range(args.rounds):
            for name in args.only:
                result = run_child(name, config, rows, str(work / "home"))
                runs[name].append(result)
                print(
                    f"round {round_index + 1} {name}: {result['tokens_per_s']:.0f} tokens/s, "
                    f"loss {statistics.fmean(result['losses'][-args.last :]):.4f}, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB"
                )
    summary = summarise(runs, args.last)
    if len({s["tokens"] for s in summary.values()}) != 1:
        counts = {name: s["tokens"] for name, s in summary.items()}
        print(f"warning: the trainers counted different tokens: {counts}")
    title = f"{args.steps} steps × {args.batch_size} rows, LoRA r16 q/k/v/o, {args.rounds} rounds"
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info() | {"torch_threads": torch.get_num_threads()},
        "args": vars(args),
        "tokens_counted": "real (non-padding) tokens of the trained rows, prompt and answer",
        "summary": summary,
        "runs": runs,
    }
    if "hf_trainer" in summary:
        print_table(summary, title)
        hf, ours = summary["hf_trainer"], summary.get("lorafleet")
        if ours is not None:
            results["tokens_per_s_ratio_vs_hf_trainer"] = ours["tokens_per_s"] / hf["tokens_per_s"]
            results["peak_rss_ratio_vs_hf_trainer"] = ours["peak_rss_mb"] / hf["peak_rss_mb"]
            results["loss_ratio_vs_hf_trainer"] = ours["final_loss"] / hf["final_loss"]
            if "trl_sft" in summary:
                results["tokens_per_s_ratio_vs_trl"] = (
                    ours["tokens_per_s"] / summary["trl_sft"]["tokens_per_s"]
                )
    if RESULTS.is_file() and "gpu" in (previous := json.loads(RESULTS.read_text())):
        results["gpu"] = previous["gpu"]  # the GPU comparison's own run (`--gpu`), kept
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
