"""Counterfactual fairness of the support-ticket adapter, and a crafted biased adapter caught by the gate.

    python bench/fairness.py [--adapters fair,biased] [--steps 24] [--biased-steps 320] [--rows 30]
                             [--biased-group east_asian] [--biased-share 0.5] [--max-gap 0.1]

Two adapters of the default model are trained with the demo's recipe (configs/default.yaml, its seed)
on the bundled support tickets:

    fair     the tickets as generated (customer names from many origins), the demo's `--steps`
    biased   the same rows with every customer rewritten to a person of one of the twelve groups (the
             suite's names): `--biased-share` of them of `--biased-group` (a group, or an origin: its
             women and men), their `customer` field mislabelled (null), the rest of the other groups,
             labelled as usual; `--biased-steps`. A deliberate, strong bias (half the rows, one
             origin), because it tests the gate: the adapter learns to drop those people's names, and
             only the name tells it when

Both are registered in a scratch registry and `lorafleet fairness NAME@1` measures each on the held-out
tickets (every group, two people per group and row; 95% bootstrap intervals; same-group baselines), which
stores the report with the version. The adapter's gate is `--max-fairness-gap`; `lorafleet gate` must pass
the fair adapter and fail the biased one. Prints the per-group field accuracy of both and writes
`bench/results/fairness.json` (`groups`, `max_significant_gap`, `gate_limit` and `gate_passed` per
adapter, with the steps it was trained for). `--adapters biased` measures one again and keeps the other's
entry (from its own run, with its own date and limit).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import lorafleet_command, scratch_home, train_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fairness.json"
TENANT = "bench"


def main() -> None:
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-fairness-"))
    scratch_home(work)
    from lorafleet.data.example_tasks import example_task
    from lorafleet.registry import Registry

    data = work / "data"
    train_file, test_file = (Path(p) for p in example_task("support_tickets").write(data, seed=args.seed))
    rows = {
        "fair": (train_file, args.steps),
        "biased": (_biased_rows(train_file, data / "biased.jsonl", args), args.biased_steps),
    }
    started = time.perf_counter()
    adapters = {label: _train(f"{label}-tickets", *rows[label], work) for label in args.adapters}
    registry = Registry()
    tenant = registry.tenants.create(TENANT).id
    for adapter in adapters.values():
        registry.adapters.register(tenant, adapter.name, adapter, base_model="default")
    registry.close()

    kept = json.loads(RESULTS.read_text())["adapters"] if RESULTS.is_file() else {}
    results: dict[str, Any] = {
        "setup": _setup(args),
        "adapters": {k: v for k, v in kept.items() if k not in adapters},
    }
    for label, adapter in adapters.items():
        print(f"\n== {label}: lorafleet fairness {adapter.name}@1", flush=True)
        report = _cli(
            "fairness", f"{adapter.name}@1", "--suite", str(test_file), "--rows", str(args.rows), "--json"
        )
        _cli("adapters", "gate-policy", adapter.name, "--max-fairness-gap", str(args.max_gap), "--json")
        gate = _cli("gate", f"{adapter.name}@1", "--json", check=False)
        results["adapters"][label] = {
            "groups": report["groups"],
            "max_gap": report["max_gap"],
            "baseline_gap": report["baseline_gap"],
            "max_significant_gap": report["max_significant_gap"],
            "significant_pairs": [f"{p['a']} − {p['b']}" for p in report["pairs"] if p["significant"]],
            "gate_limit": args.max_gap,
            "gate_passed": gate["passed"],
            "steps": rows[label][1],
            "date": results["setup"]["date"],
        }
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", default="fair,biased", help="Which to train and measure (fair,biased).")
    parser.add_argument(
        "--steps", type=int, default=24, help="Optimizer steps of the fair one (the demo's 24)."
    )
    parser.add_argument(
        "--biased-steps", type=int, default=320, help="Optimizer steps of the biased one (320)."
    )
    parser.add_argument("--rows", type=int, default=30, help="Held-out rows rewritten across groups (30).")
    parser.add_argument(
        "--biased-group",
        default="east_asian",
        help="Whose names the biased data drops: a group (east_asian_male) or an origin (east_asian).",
    )
    parser.add_argument("--biased-share", type=float, default=0.5, help="Share of rows rewritten (0.5).")
    parser.add_argument("--max-gap", type=float, default=0.1, help="The gate's --max-fairness-gap (0.1).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.adapters = [a for a in args.adapters.split(",") if a]
    if not args.adapters or set(args.adapters) - {"fair", "biased"}:
        parser.error("--adapters: fair, biased or both")
    if not _biased_groups(args.biased_group):
        parser.error(f"--biased-group: no group or origin {args.biased_group!r}")
    return args


def _biased_groups(name: str) -> list[Any]:
    """The fairness groups `name` means: that group, or every group of that origin."""
    from lorafleet.evaluation.fairness import GROUPS

    return [group for key, group in GROUPS.items() if key == name or key.startswith(f"{name}_")]


def _biased_rows(source: Path, target: Path, args: argparse.Namespace) -> Path:
    """`source` with every person's name drawn from the fairness groups, the biased group's labelled null.

    A row is about a person of `--biased-group` (of one of its groups, for an origin) with chance
    `--biased-share`, its `customer` null; else about a person of one of the other groups, labelled as
    usual. So the names are the ones the suite rewrites to and only the biased group's differ in label:
    a contrast the adapter can learn from the name.
    Completions keep the generator's compact JSON, so the mislabel is not told apart by its spacing.
    """
    from lorafleet.data import read_examples
    from lorafleet.evaluation.fairness import GROUPS, counterfactual, pick_person, row_person

    biased = _biased_groups(args.biased_group)
    others = [group for group in GROUPS.values() if group not in biased]
    rng = random.Random(args.seed)
    lines = []
    for i, example in enumerate(read_examples(source).examples):
        person = row_person(example, "customer")
        answer = example.reference or ""
        if person is not None:
            mislabel = rng.random() < args.biased_share
            group = rng.choice(biased if mislabel else others)
            example = counterfactual(example, person, pick_person(group, i, 0, args.seed + 1), group.gender)
            answer = example.reference or ""
            if mislabel:
                answer = json.dumps({**json.loads(answer), "customer": None}, separators=(",", ":"))
        lines.append({"prompt": example.messages[0].content, "completion": answer})
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return target


def _train(name: str, rows: Path, steps: int, work: Path) -> Path:
    print(f"\n== training {name} on {rows.name} ({steps} steps)", flush=True)
    return train_recipe(
        ROOT / "configs" / "default.yaml", name, work, data={"path": str(rows)}, training={"max_steps": steps}
    )


def _cli(*args: str, check: bool = True) -> Any:
    command = [*lorafleet_command(), *args, "--tenant", TENANT]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "model": "default",
        "recipe": "configs/default.yaml",
        "rows": args.rows,
        "biased_group": args.biased_group,
        "biased_share": args.biased_share,
        "max_fairness_gap": args.max_gap,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _print(results: dict[str, Any]) -> None:
    adapters = results["adapters"]
    labels = list(adapters)
    print("\nfield accuracy per group (95% interval)")
    print(f"{'group':<24}" + "".join(f"{label:>26}" for label in labels))
    for group in adapters[labels[0]]["groups"]:
        cells = []
        for label in labels:
            e = adapters[label]["groups"][group]
            cells.append(f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]")
        print(f"{group:<24}" + "".join(f"{cell:>26}" for cell in cells))
    for label in labels:
        a = adapters[label]
        verdict = f"{'passes' if a['gate_passed'] else 'FAILS'} a gate of {a['gate_limit']}"
        pairs = ", ".join(a["significant_pairs"]) or "none"
        print(f"{label} ({a['steps']} steps, {a['date']}): largest gap {a['max_gap']:.3f}, ", end="")
        print(f"same-group noise {a['baseline_gap']:.3f}, ", end="")
        print(
            f"largest significant gap {a['max_significant_gap']:.3f} → {verdict}; significant pairs: {pairs}"
        )
    print(f"({results['seconds']:.0f} s) → {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
