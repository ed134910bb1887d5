"""Federated LoRA on the default model: centralized, local-only, FedAvg, and DP-FedAvg at ε = 8 and ε = 1,
with the same total local optimizer steps in every setting.

    python bench/federated.py [--quick] [--clients 10] [--fraction 0.3] [--rounds 6] [--local-steps 2]

The support tickets are split non-IID across the clients (`lorafleet data example --federated N`: each
client sees two ticket types and writes every date in one style) with a common held-out set. A federated
run of R rounds samples m = fraction × clients clients per round (in expectation, under DP), each taking k
local steps: T = R·m·k optimizer steps in all, and every other setting gets the same T:

    base          the bundled model, untrained (for reference)
    centralized   one adapter trained T steps on the union of the clients' rows (the upper bound)
    centralized_sequential
                  the same for R·k steps only: as many sequential steps as the federation's model takes
                  (its m clients' steps of a round run side by side), to tell what the federation loses to
                  averaging and skewed clients from what it loses to taking m times fewer steps in a row
    local_only    each client alone trains its share of T (T/N steps, as many as it takes in the federation)
                  on its own rows; the score is the mean over clients, each scored on the common held-out set
    fedavg        `lorafleet federate`: Flower's simulation engine, weighted FedAvg, no noise
    fedavg_secagg the same through Flower's SecAgg+ (`federated.secure_aggregation`): what masking costs
    dp_eps8/1     DP-FedAvg (Poisson sampling at rate fraction, clip C, σ from Opacus' RDP accountant for the
                  target ε at δ = 1e-5 over R rounds)

A run repeats for its `--seed` (the rows, their split, the clients each round draws and their draws),
except SecAgg+'s stochastic rounding (steps of 2·clipping_range / 2²²) and the DP runs' sampling and
noise, which come from the system's random source by design. Every adapter is scored the same way
(greedy, `json_fields` field accuracy) on the first `--scored-rows` held-out tickets; the server's
per-round validation loss uses the last 16 held-out rows. It prints a table and writes
`bench/results/federated.json` with, per setting, `field_accuracy`, `epsilon`, `mb_communicated` (LoRA
tensors sent both ways) and `wall_s` (training and scoring). `--quick` is a smoke check (4 clients, 2
rounds, 8 scored rows; minutes) and writes `federated-quick.json` instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SYSTEM_PROMPT = "You turn support tickets into JSON records."
SETTINGS = (
    "base",
    "centralized",
    "centralized_sequential",
    "local_only",
    "fedavg",
    "fedavg_secagg",
    "dp_eps8",
    "dp_eps1",
)
VALIDATION_ROWS = 16
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    args = _arguments()
    folder = Path(tempfile.mkdtemp(prefix="lorafleet-federated-"))
    data = _write_data(folder / "data", args)
    per_round = args.fraction * args.clients
    total_steps = round(args.rounds * per_round * args.local_steps)
    results: dict[str, Any] = {
        "setup": {
            "model": "default",
            "clients": args.clients,
            "fraction": args.fraction,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "total_local_steps": total_steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "precision": args.precision,
            "clip_norm": args.clip_norm,
            "delta": 1e-5,
            "scored_rows": args.scored_rows,
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "settings": {},
    }
    started = time.perf_counter()
    runs = {
        "base": lambda: _base(data, args),
        "centralized": lambda: _centralized(data, total_steps, args),
        "centralized_sequential": lambda: _centralized(data, args.rounds * args.local_steps, args),
        "local_only": lambda: _local_only(data, total_steps, args),
        "fedavg": lambda: _federated("fedavg", data, args, epsilon=None),
        "fedavg_secagg": lambda: _federated("fedavg_secagg", data, args, epsilon=None, secure=True),
        "dp_eps8": lambda: _federated("dp_eps8", data, args, epsilon=8.0),
        "dp_eps1": lambda: _federated("dp_eps1", data, args, epsilon=1.0),
    }
    for name in args.settings:
        print(f"\n== {name}", flush=True)
        clock = time.perf_counter()
        row = runs[name]()
        row["wall_s"] = round(time.perf_counter() - clock, 1)
        results["settings"][name] = row
        print(f"   {name}: field accuracy {row['field_accuracy']:.3f} ({row['wall_s']:.0f} s)", flush=True)
        _save(results, args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    _save(results, args)
    _print_table(results, args)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="A smoke check: 4 clients, 2 rounds, 8 rows.")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.3, help="Clients sampled per round (0.3).")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=2, help="Optimizer steps per sampled client (2).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--clip-norm", type=float, default=0.01, help="DP: C, each update's norm bound.")
    parser.add_argument("--precision", default="auto", help="training.mixed_precision everywhere (auto).")
    parser.add_argument("--train-rows", type=int, default=1000, help="Rows over all clients (1000).")
    parser.add_argument("--scored-rows", type=int, default=40, help="Held-out rows scored per adapter (40).")
    parser.add_argument(
        "--settings",
        default="fedavg,fedavg_secagg,dp_eps8,dp_eps1,centralized,centralized_sequential,local_only,base",
        help="Comma-separated settings, run in this order (the federated ones first: the newest code).",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds, args.local_steps, args.scored_rows = 4, 2, 1, 8
        args.fraction, args.train_rows = 0.5, 80
    args.settings = [s for s in args.settings.split(",") if s]
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    return args


def _write_data(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The clients' files, their union, the scored held-out rows and the server's validation rows."""
    from lorafleet.data.federated_split import CLIENT_PATTERN, write_federated_split

    test_rows = args.scored_rows + VALIDATION_ROWS
    clients = write_federated_split(
        folder, clients=args.clients, train_rows=args.train_rows, test_rows=test_rows, seed=args.seed
    )
    union = folder / "union.jsonl"
    union.write_text("".join(path.read_text() for path in clients))
    held_out = (folder / "test.jsonl").read_text().splitlines(keepends=True)
    (folder / "scored.jsonl").write_text("".join(held_out[: args.scored_rows]))
    (folder / "validation.jsonl").write_text("".join(held_out[args.scored_rows :]))
    return {
        "clients": clients,
        "pattern": str(folder / CLIENT_PATTERN),
        "union": union,
        "scored": folder / "scored.jsonl",
        "validation": folder / "validation.jsonl",
    }


def _recipe(name: str, args: argparse.Namespace) -> list[str]:
    """`--set` overrides of the default recipe shared by every setting (scoring is done here)."""
    return [
        "model.name=default",
        f"data.system_prompt={SYSTEM_PROMPT}",
        "data.validation_fraction=0",
        f"training.batch_size={args.batch_size}",
        f"training.learning_rate={args.learning_rate}",
        f"training.seed={args.seed}",
        f"training.mixed_precision={args.precision}",
        "training.checkpoint_steps=0",
        "eval.metric=none",
        "eval.compare_base=false",
        f"output.name=federated-bench-{name}",
        "output.overwrite=true",
    ]


def _base(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from lorafleet.models import load_base

    base, tokenizer = load_base("default")
    return {
        "field_accuracy": _score(base, tokenizer, data["scored"], args),
        "epsilon": None,
        "mb_communicated": 0.0,
    }


def _centralized(data: dict[str, Any], steps: int, args: argparse.Namespace) -> dict[str, Any]:
    adapter = _train_alone(f"centralized-{steps}", data["union"], steps, args)
    return {
        "field_accuracy": _score_adapter(adapter, data, args),
        "epsilon": None,
        "mb_communicated": 0.0,
        "steps": steps,
    }


def _local_only(data: dict[str, Any], steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Each client trains its share of the steps alone; the mean (and each) of their scores."""
    shares = [steps // args.clients + (1 if k < steps % args.clients else 0) for k in range(args.clients)]
    from lorafleet.adapters import load_adapter
    from lorafleet.models import load_base

    base, tokenizer = load_base("default")  # one base for scoring every client's adapter in turn
    scores = []
    for client, (path, share) in enumerate(zip(data["clients"], shares, strict=True)):
        adapter = _train_alone(f"local-{client}", path, share, args)
        model = load_adapter(base, adapter)
        scores.append(_score(model, tokenizer, data["scored"], args))
        base = model.unload()  # the plain base again, for the next client
        print(f"   client {client}: {share} steps, field accuracy {scores[-1]:.3f}", flush=True)
    return {
        "field_accuracy": round(sum(scores) / len(scores), 4),
        "epsilon": None,
        "mb_communicated": 0.0,
        "per_client": [round(score, 4) for score in scores],
        "steps_per_client": shares,
    }


def _federated(
    name: str, data: dict[str, Any], args: argparse.Namespace, *, epsilon: float | None, secure: bool = False
) -> dict[str, Any]:
    from lorafleet.federated.simulation import federate
    from lorafleet.training import load_config

    overrides = [
        *_recipe(name, args),
        f"data.path={data['pattern']}",
        f"data.validation_path={data['validation']}",
        f"federated.clients={args.clients}",
        f"federated.fraction={args.fraction}",
        f"federated.rounds={args.rounds}",
        f"federated.local_steps={args.local_steps}",
        f"federated.min_clients={2 if secure else 1}",
        f"federated.validation_rows={VALIDATION_ROWS}",
    ]
    if secure:
        overrides.append("federated.secure_aggregation.threshold=0.6")
    if epsilon is not None:
        overrides += [f"federated.privacy.epsilon={epsilon}", f"federated.privacy.clip_norm={args.clip_norm}"]
    config = load_config("configs/default.yaml", overrides)
    result = federate(config, log=lambda line: print(f"   {line}", flush=True))
    summary = result.summary
    return {
        "field_accuracy": _score_adapter(result.adapter_dir, data, args),
        "epsilon": summary["federated"]["epsilon"],
        "noise_multiplier": summary["federated"]["noise_multiplier"],
        "mb_communicated": round(summary["bytes_communicated"] / 1e6, 2),
        "rounds_run": summary["federated"]["rounds"],
        "clients_trained": sum(len(entry["accepted"]) for entry in summary["rounds"]),
        "validation_loss": [entry["validation_loss"] for entry in summary["rounds"]],
    }


def _train_alone(name: str, path: Path, steps: int, args: argparse.Namespace) -> Path:
    from lorafleet.training import load_config, train

    config = load_config(
        "configs/default.yaml", [*_recipe(name, args), f"data.path={path}", f"training.max_steps={steps}"]
    )
    return train(config, show_progress=False, log=lambda _: None).adapter_dir


def _score_adapter(adapter_dir: Path, data: dict[str, Any], args: argparse.Namespace) -> float:
    from lorafleet.adapters import load_adapter
    from lorafleet.models import load_base

    base, tokenizer = load_base("default")
    return _score(load_adapter(base, adapter_dir), tokenizer, data["scored"], args)


def _score(model: torch.nn.Module, tokenizer: Any, path: Path, args: argparse.Namespace) -> float:
    from lorafleet.evaluation.suites import score_suite

    scored = score_suite(
        model,
        tokenizer,
        path,
        "json_fields",
        system_prompt=SYSTEM_PROMPT,
        max_new_tokens=64,
        batch_size=50,
        max_rows=args.scored_rows,
    )
    return float(scored["score"])


def _print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows = {name: results["settings"][name] for name in SETTINGS if name in results["settings"]}
    central = rows.get("centralized", {}).get("field_accuracy")
    print(f"\n{'setting':<23}{'field acc':>10}{'vs central':>11}{'ε':>8}{'MB':>9}{'wall s':>9}")
    for name, row in rows.items():
        gap = "" if central is None else f"{100 * (row['field_accuracy'] - central):+.1f}"
        epsilon = "" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        print(
            f"{name:<23}{row['field_accuracy']:>10.3f}{gap:>11}{epsilon:>8}{row['mb_communicated']:>9.1f}"
            f"{row['wall_s']:>9.0f}"
        )
    print(f"\nwhole bench: {results['seconds'] / 60:.1f} min; results in {_results_path(args)}")


def _results_path(args: argparse.Namespace) -> Path:
    return RESULTS / ("federated-quick.json" if args.quick else "federated.json")


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.machine()


def _save(results: dict[str, Any], args: argparse.Namespace) -> None:
    path = _results_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
