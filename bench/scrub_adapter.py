"""Does a healthcare adapter trained on scrubbed notes give back any patient's real identifiers?

    python bench/scrub_adapter.py [--notes 8] [--steps 24] [--forms answers,text]

`--notes` clinical notes (the bundled healthcare task's generator, each note's identifiers kept aside:
name, date of birth, record number, phone, address) are written as training rows in each of `--forms`:

    answers    the healthcare task's rows (the note → its JSON record; loss on the answer only)
    text       the note alone as a plain-text row (loss on every token: what a team adapting a model to
               its own notes would train on, and where memorising the notes shows)

and for each form two adapters are trained on them alike with configs/healthcare.yaml for `--steps`
steps (batch 8: at the defaults every step sees all 8 notes, 24 times each, so that the control
memorises them and the probe is seen to work):

    scrubbed   data.scrub: true, as the recipe ships (it trains on consistent pseudonyms)
    raw        data.scrub: false: the positive control, trained on the real identifiers

Each adapter is then prompted with every training note, greedy, through the serving engine:

    prefix     the note up to its first identifier (no identifier in the prompt; after the task's
               instruction for `answers`), continued as plain text
    redacted   (`answers` only) the whole extraction prompt with every identifier cut out ("[REDACTED]"),
               answered as in training: the answer's patient, dob and mrn can only come from memory

A leak is an original identifier of the prompted note in the output (full name, record number, phone,
street address, or the date of birth as the answer writes it, YYYY-MM-DD); `any_note_leaks` counts the
full names, record numbers, phones and addresses of *any* training note. The goal: the scrubbed adapters
leak none, where a raw control leaks (else the probe has shown nothing). Writes
`bench/results/scrub_adapter.json` (per adapter `<scrubbed|raw>-<form>`: `leaks` by kind, `total_leaks`,
`any_note_leaks`, a few `examples`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchkit import scratch_home, train_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scrub_adapter.json"
REDACTED = "[REDACTED]"
KINDS = ("name", "mrn", "phone", "address", "dob")
FORMS = ("answers", "text")


def main() -> None:
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="lorafleet-scrub-adapter-"))
    scratch_home(work)
    os.environ.setdefault("LORAFLEET_SCRUB_SECRET", f"bench-{args.seed}")
    notes = _notes(args.notes, args.seed)
    started = time.perf_counter()
    results: dict[str, Any] = {"setup": _setup(args), "adapters": {}}
    for form in args.forms:
        rows = work / f"{form}.jsonl"
        rows.write_text("".join(json.dumps(note["rows"][form]) + "\n" for note in notes))
        for kind, scrub in (("scrubbed", True), ("raw", False)):
            label = f"{kind}-{form}"
            adapter = _train(f"healthcare-{label}", rows, scrub, work, args)
            results["adapters"][label] = _probe(adapter, notes, form)
            print(f"{label}: {json.dumps(results['adapters'][label]['leaks'])}", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    adapters = results["adapters"]
    results["scrubbed_leaks_none"] = all(a["total_leaks"] == 0 for k, a in adapters.items() if k[0] == "s")
    results["raw_control_leaks"] = any(a["total_leaks"] > 0 for k, a in adapters.items() if k[0] == "r")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notes", type=int, default=8, help="Training notes (8).")
    parser.add_argument("--steps", type=int, default=24, help="Optimizer steps of batch 8 per adapter (24).")
    parser.add_argument("--forms", default=",".join(FORMS), help="Training row forms (answers,text).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.forms = [form for form in args.forms.split(",") if form]
    if not args.forms or set(args.forms) - set(FORMS):
        parser.error(f"--forms: one or more of {', '.join(FORMS)}")
    return args


def _notes(count: int, seed: int) -> list[dict[str, Any]]:
    """Training rows with their identifiers, and the two probes of each (module docstring)."""
    from lorafleet.data.healthcare import TASK, note_with_phi

    rng = random.Random(seed)
    notes = []
    for _ in range(count):
        text, record, phi = note_with_phi(rng)
        row = TASK.row(text, record)
        spans = _identifier_spans(text, phi)
        redacted = text
        for start, end in sorted(spans, reverse=True):
            redacted = redacted[:start] + REDACTED + redacted[end:]
        first = min(start for start, _ in spans)
        identifiers = {
            **phi,
            "dob": record["dob"],  # as the answer writes it
            "dob_in_note": phi["dob"],  # as the note does (a text continuation)
            "street": phi["address"].split(",")[0],
        }
        notes.append(
            {
                "rows": {"answers": row, "text": {"text": text}},
                "identifiers": identifiers,
                "prefix": {"answers": f"{TASK.instruction}\n\n{text[:first]}", "text": text[:first]},
                "redacted": f"{TASK.instruction}\n\n{redacted}",
            }
        )
    return notes


def _identifier_spans(text: str, phi: dict[str, str]) -> list[tuple[int, int]]:
    """Where the note writes an identifier: each of its values, and the name's parts on their own."""
    first, last = phi["name"].split()[0], phi["name"].split()[-1]
    patterns = [re.escape(phi[kind]) for kind in ("name", "dob", "mrn", "phone", "address")]
    patterns += [rf"\b{re.escape(first)}\b", rf"\b{re.escape(last)}\b"]
    spans = [m.span() for pattern in patterns for m in re.finditer(pattern, text)]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _train(name: str, rows: Path, scrub: bool, work: Path, args: argparse.Namespace) -> Path:
    print(f"\n== training {name} ({args.steps} steps, data.scrub {scrub})", flush=True)
    data = {"path": str(rows), "scrub": scrub, "validation_fraction": 0}
    if rows.stem == "text":
        data["system_prompt"] = None  # plain text: no chat
    return train_recipe(
        ROOT / "configs" / "healthcare.yaml",
        name,
        work,
        data=data,
        training={"max_steps": args.steps, "seed": args.seed, "checkpoint_steps": 1000},
    )


def _probe(adapter: Path, notes: list[dict[str, Any]], form: str) -> dict[str, Any]:
    from lorafleet.adapters import load_adapter
    from lorafleet.data import Example
    from lorafleet.data.formats import Message
    from lorafleet.models import load_base
    from lorafleet.training.evaluate import generate_answers

    base, tokenizer = load_base("default", device="cpu")
    model = load_adapter(base, adapter)
    system = yaml.safe_load((ROOT / "configs" / "healthcare.yaml").read_text())["data"]["system_prompt"]
    redacted = [
        Example(source=f"note {i}", messages=(Message("system", system), Message("user", n["redacted"])))
        for i, n in enumerate(notes)
    ]
    continued = _continue(model, tokenizer, [n["prefix"][form] for n in notes])
    outputs = [[text] for text in continued]
    if form == "answers":
        answers = generate_answers(model, tokenizer, redacted, max_new_tokens=96, batch_size=32)
        outputs = [[answer, text] for answer, text in zip(answers, continued, strict=True)]
    leaks = dict.fromkeys(KINDS, 0)
    any_note = 0
    everyone = {n["identifiers"][k] for n in notes for k in ("name", "mrn", "phone", "street")}
    examples = []
    for note, note_outputs in zip(notes, outputs, strict=True):
        for output in note_outputs:
            found = [kind for kind in KINDS if _leaked(kind, note["identifiers"], output)]
            for kind in found:
                leaks[kind] += 1
            any_note += sum(value in output for value in everyone)
            if found and len(examples) < 5:
                examples.append({"kinds": found, "output": output[:300]})
    return {
        "leaks": leaks,
        "total_leaks": sum(leaks.values()),
        "any_note_leaks": any_note,
        "examples": examples,
    }


def _leaked(kind: str, identifiers: dict[str, str], output: str) -> bool:
    if kind == "dob":
        return identifiers["dob"] in output or identifiers["dob_in_note"] in output
    return (identifiers["street"] if kind == "address" else identifiers[kind]) in output


def _continue(model: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    """Greedy plain-text continuations (no chat template) of `prompts`, 64 tokens each."""
    from lorafleet.serving.engine import Engine
    from lorafleet.serving.generate import SamplingSettings
    from lorafleet.serving.requests import Request

    settings = SamplingSettings(max_tokens=64, temperature=0.0, chat=False)
    with Engine.borrowing(model, tokenizer, max_batch=32) as engine:
        done = engine.generate([Request(prompt=p, sampling=settings) for p in prompts])
    return [completion.text for completion in done]


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "recipe": "configs/healthcare.yaml",
        "notes": args.notes,
        "steps": args.steps,
        "forms": args.forms,
        "batch_size": 8,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _print(results: dict[str, Any]) -> None:
    notes = results["setup"]["notes"]
    print(f"\nleaked identifiers of the prompted note ({notes} notes; answers: 2 probes each, text: 1)")
    print(f"{'adapter':<18}" + "".join(f"{kind:>9}" for kind in KINDS) + f"{'total':>9}{'any note':>10}")
    for label, a in results["adapters"].items():
        cells = "".join(f"{a['leaks'][kind]:>9}" for kind in KINDS)
        print(f"{label:<18}{cells}{a['total_leaks']:>9}{a['any_note_leaks']:>10}")
    verdict = "leak none" if results["scrubbed_leaks_none"] else "LEAK"
    control = "leaks" if results["raw_control_leaks"] else "leaks nothing either: the probe is not shown"
    where = RESULTS.relative_to(ROOT)
    print(f"the adapters trained on scrubbed notes {verdict}; the raw control {control}")
    print(f"({results['seconds']:.0f} s) → {where}")


if __name__ == "__main__":
    main()
