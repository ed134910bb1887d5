"""Continual learning on the default model: three tasks in sequence, each strategy against forgetting, and
joint training on all three (the upper bound), with the same optimizer steps per task.

    python bench/continual.py [--steps-per-task 40] [--scored-rows 40] [--strategies none,replay,...]

The tasks are the bundled generated ones (support tickets → invoices → meeting notes), written from a
fixed seed into a temporary folder. For each strategy, stage k trains task k from the adapter of stage
k − 1 (`model.parent`, `continual.strategy`; stage 1 starts fresh), and after each stage the adapter is
scored (greedy, `json_fields` field accuracy) on the first `--scored-rows` held-out rows of every task
learned so far: the accuracy matrix R[stage][task] (tasks not yet seen are not scored: null). Joint
training sees the rows of all three tasks, shuffled, for three times the steps. Every run, joint training
included, rehearses the base's general ability at every stage (`continual.rehearsal_share`, default
0.125: one row in eight is the base's own answer to a shipped everyday prompt that the probe below does
not use; `--rehearsal-share 0` turns it off). From R (T tasks, T stages):

    average accuracy  (1/T) Σⱼ R[T][j]                         after the last stage
    BWT               (1/(T−1)) Σ_{j<T} (R[T][j] − R[j][j])     negative = forgotten
    general drift     perplexity of the final adapter on the base model's own answers to the general
                      probe prompts, over the base's, minus 1 (`lorafleet.evaluation.probe`)

It prints the matrices and a summary table and writes `bench/results/continual.json` with, per
strategy, `bwt`, `average_accuracy` and `general_drift` (fractions of 1), the matrix, and timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lorafleet.data.example_tasks import TASKS

TASK_ORDER = ("support_tickets", "invoices", "meeting_notes")
SYSTEM_PROMPT = "You turn text into JSON records."
STRATEGIES = ("none", "replay", "ewc", "orthogonal")
RESULTS = Path(__file__).parent / "results" / "continual.json"


def main() -> None:
    args = _arguments()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(prefix="lorafleet-continual-"))
    data = _write_tasks(folder / "data", seed=args.seed)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "setup": {
            "model": "default",
            "tasks": list(TASK_ORDER),
            "steps_per_task": args.steps_per_task,
            "scored_rows": args.scored_rows,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "replay_share": args.replay_share,
            "replay_mode": args.replay_mode,
            "ewc_lambda": args.ewc_lambda,
            "fisher_rows": args.fisher_rows,
            "orthogonal_lambda": args.orthogonal_lambda,
            "rehearsal_share": args.rehearsal_share,
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "strategies": {},
    }
    for strategy in args.strategies:
        print(f"\n== {strategy}: {' → '.join(TASK_ORDER)}, {args.steps_per_task} steps each", flush=True)
        results["strategies"][strategy] = _sequence(strategy, data, folder, args)
        _save(results)
    if args.joint:
        print(f"\n== joint: all three tasks, {args.steps_per_task * len(TASK_ORDER)} steps", flush=True)
        results["strategies"]["joint"] = _joint(data, folder, args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _save(results)
    _print_summary(results)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps-per-task", type=int, default=40, help="Optimizer steps per task (default 40)."
    )
    parser.add_argument("--scored-rows", type=int, default=40, help="Held-out rows scored per task (40).")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated strategies.")
    parser.add_argument("--no-joint", dest="joint", action="store_false", help="Skip joint training.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--replay-share", type=float, default=0.5, help="continual.replay_share of replay (0.5)."
    )
    parser.add_argument(
        "--replay-mode",
        choices=["share", "added"],
        default="added",
        help="continual.replay_mode of replay (added: the replayed rows on top of a full step of new ones).",
    )
    parser.add_argument("--ewc-lambda", type=float, default=1e6)
    parser.add_argument(
        "--fisher-rows", type=int, default=64, help="Rows the parent's Fisher is estimated on."
    )
    parser.add_argument("--orthogonal-lambda", type=float, default=0.1)
    parser.add_argument(
        "--rehearsal-share",
        type=float,
        default=0.125,
        help="continual.rehearsal_share of every run and stage, joint training included (0: off).",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    return args


def _write_tasks(folder: Path, *, seed: int) -> dict[str, tuple[Path, Path]]:
    """Each task's (train.jsonl, test.jsonl), written from `seed`."""
    paths = {}
    for name in TASK_ORDER:
        train, test = TASKS[name].write(folder / name, train_rows=1000, test_rows=200, seed=seed)
        paths[name] = (Path(train), Path(test))
    return paths


def _recipe(name: str, train_path: Path, steps: int, args: argparse.Namespace) -> list[str]:
    """`--set` overrides of the default recipe for one stage (scoring is done here, not by train)."""
    return [
        "model.name=default",
        f"data.path={train_path}",
        f"data.system_prompt={SYSTEM_PROMPT}",
        "data.validation_fraction=0",
        f"training.max_steps={steps}",
        f"training.batch_size={args.batch_size}",
        f"training.learning_rate={args.learning_rate}",
        f"training.seed={args.seed}",
        "training.checkpoint_steps=1000",
        "training.attention=eager",  # transformers' eager: the fastest step on a CPU, memory is no object
        "eval.metric=none",
        "eval.compare_base=false",
        f"output.name={name}",
        "output.overwrite=true",
    ] + ([f"continual.rehearsal_share={args.rehearsal_share}"] if args.rehearsal_share else [])


def _continual(strategy: str, parent: Path, seen: list[Path], args: argparse.Namespace) -> list[str]:
    overrides = [f"model.parent={parent}", f"continual.strategy={strategy}"]
    if strategy == "replay":
        overrides += [
            f"continual.replay_share={args.replay_share}",
            f"continual.replay_mode={args.replay_mode}",
            f"continual.replay_paths={json.dumps([str(p) for p in seen])}",
        ]
    elif strategy == "ewc":
        overrides += [f"continual.ewc_lambda={args.ewc_lambda}", f"continual.fisher_rows={args.fisher_rows}"]
    elif strategy == "orthogonal":
        overrides += [f"continual.orthogonal_lambda={args.orthogonal_lambda}"]
    return overrides


def _sequence(
    strategy: str, data: dict[str, tuple[Path, Path]], folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from lorafleet.training import load_config, train

    matrix: list[list[float | None]] = []
    parent: Path | None = None
    train_seconds = score_seconds = 0.0
    for stage, name in enumerate(TASK_ORDER):
        overrides = _recipe(f"continual-{strategy}-{stage + 1}", data[name][0], args.steps_per_task, args)
        if parent is not None:
            seen = [data[earlier][0] for earlier in TASK_ORDER[:stage]]
            overrides += _continual(strategy, parent, seen, args)
        config = load_config("configs/default.yaml", overrides)
        clock = time.perf_counter()
        result = train(config, show_progress=False, log=lambda line: print(f"   {line}", flush=True))
        train_seconds += time.perf_counter() - clock
        parent = result.adapter_dir
        clock = time.perf_counter()
        learned = TASK_ORDER[: stage + 1]  # a task not yet trained is not scored
        scores = _accuracies(parent, [data[task][1] for task in learned], args.scored_rows)
        matrix.append(scores + [None] * (len(TASK_ORDER) - len(learned)))
        score_seconds += time.perf_counter() - clock
        print(f"   after {name}: {_scores(matrix[-1])}", flush=True)
    assert parent is not None
    return _summary(matrix, parent, train_seconds, score_seconds)


def _joint(data: dict[str, tuple[Path, Path]], folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lorafleet.training import load_config, train

    rows = [line for name in TASK_ORDER for line in data[name][0].read_text().splitlines() if line.strip()]
    random.Random(args.seed).shuffle(rows)
    joint = folder / "data" / "joint.jsonl"
    joint.write_text("\n".join(rows) + "\n")
    config = load_config(
        "configs/default.yaml", _recipe("continual-joint", joint, args.steps_per_task * 3, args)
    )
    clock = time.perf_counter()
    result = train(config, show_progress=False, log=lambda line: print(f"   {line}", flush=True))
    train_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    final = _accuracies(result.adapter_dir, [data[task][1] for task in TASK_ORDER], args.scored_rows)
    score_seconds = time.perf_counter() - clock
    print(f"   joint: {_scores(final)}", flush=True)
    summary = _summary([final], result.adapter_dir, train_seconds, score_seconds)
    summary["bwt"] = None  # one stage: nothing learned earlier to forget
    return summary


def _accuracies(adapter_dir: Path, test_paths: list[Path], rows: int) -> list[float]:
    """Field accuracy of `adapter_dir` on the first `rows` held-out rows of each of `test_paths` (greedy),
    scored as a version's eval suites are (`evaluation.suites.score_suite`), the adapter loaded once."""
    from lorafleet.adapters import load_adapter
    from lorafleet.evaluation.suites import score_suite
    from lorafleet.models import load_base

    base, tokenizer = load_base("default")
    model = load_adapter(base, adapter_dir)
    return [
        score_suite(
            model,
            tokenizer,
            path,
            "json_fields",
            system_prompt=SYSTEM_PROMPT,
            max_new_tokens=64,
            batch_size=50,
            max_rows=rows,
        )["score"]
        for path in test_paths
    ]


def _summary(
    matrix: list[list[float | None]], final: Path, train_seconds: float, score_seconds: float
) -> dict[str, Any]:
    from lorafleet.adapters import load_adapter
    from lorafleet.evaluation.probe import general_drift
    from lorafleet.models import load_base

    last = [value for value in matrix[-1] if value is not None]  # the last stage scores every task
    stages = len(matrix)
    diagonal = [matrix[j][j] for j in range(stages - 1)]
    bwt = sum(last[j] - (d or 0.0) for j, d in enumerate(diagonal)) / len(diagonal) if diagonal else None
    base, tokenizer = load_base("default")
    drift = general_drift(load_adapter(base, final), tokenizer)
    return {
        "accuracy_matrix": [[None if value is None else round(value, 4) for value in row] for row in matrix],
        "average_accuracy": round(sum(last) / len(last), 4),
        "bwt": None if bwt is None else round(bwt, 4),
        "general_drift": round(float(drift["drift"]), 4),
        "general_perplexity": drift,
        "train_seconds": round(train_seconds, 1),
        "score_seconds": round(score_seconds, 1),
    }


def _scores(row: list[float | None]) -> str:
    pairs = zip(TASK_ORDER, row, strict=True)
    return "  ".join(f"{task} {value:.3f}" for task, value in pairs if value is not None)


def _print_summary(results: dict[str, Any]) -> None:
    rows = results["strategies"]
    joint = rows.get("joint", {}).get("average_accuracy")
    print(f"\n{'strategy':<12}{'avg acc':>9}{'BWT':>9}{'drift':>9}{'vs joint':>10}{'minutes':>9}")
    for name, row in rows.items():
        bwt = "" if row["bwt"] is None else f"{row['bwt']:+.3f}"
        gap = "" if joint is None else f"{row['average_accuracy'] - joint:+.3f}"
        minutes = (row["train_seconds"] + row["score_seconds"]) / 60
        print(
            f"{name:<12}{row['average_accuracy']:>9.3f}{bwt:>9}{row['general_drift']:>+9.3f}{gap:>10}{minutes:>9.1f}"
        )
    print(f"\nwhole bench: {results['seconds'] / 60:.1f} min; results in {RESULTS}")


def _cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.machine()


def _save(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
