"""General rehearsal in `train`: the base's own answers to the shipped rehearsal prompts fill the
configured share of every step, with or without a parent, beside the parent's replayed rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.adapters import base_identity
from lorafleet.data import DataConfig
from lorafleet.evaluation.probe import base_answers, general_prompts, probe_cache_file
from lorafleet.models import load_base
from lorafleet.training import train
from lorafleet.training.rehearsal import MAX_NEW_TOKENS, rehearsal_prompts, rehearsal_rows
from tests.helpers import write_jsonl
from tests.training.conftest import RecipeFactory

SYSTEM_PROMPT = "Answer in JSON."


def test_the_rehearsal_prompts_are_distinct_and_none_is_a_probe_prompt() -> None:
    prompts = rehearsal_prompts()

    assert len(prompts) >= 48 and len(set(prompts)) == len(prompts)
    assert not set(prompts) & set(general_prompts()), "the probe must measure drift on unrehearsed prompts"


def test_the_rows_are_the_bases_cached_answers_without_the_recipes_system_prompt(tiny_dir: Path) -> None:
    model, tokenizer = load_base(str(tiny_dir), device="cpu")
    data = DataConfig(path="unused.jsonl", max_length=1024, system_prompt=SYSTEM_PROMPT)

    rows = rehearsal_rows(model, tokenizer, data)

    cache = probe_cache_file(base_identity(model).fingerprint, "rehearsal")
    assert cache.is_file()  # generated once, then read
    answers = base_answers(model, tokenizer, rehearsal_prompts(), max_new_tokens=MAX_NEW_TOKENS)
    assert len(rows) == len(rehearsal_prompts())
    for row, prompt, answer in zip(rows, rehearsal_prompts(), answers, strict=True):
        text = tokenizer.decode(row.input_ids)
        assert prompt in text and SYSTEM_PROMPT not in text
        labelled = [t for t in row.labels if t >= 0]  # loss on the answer (and its end) only
        answer_ids = tokenizer.encode(answer, add_special_tokens=False)
        assert labelled[: len(answer_ids)] == answer_ids and not row.truncated


def test_every_step_holds_the_rehearsal_share_without_a_parent(recipe: RecipeFactory) -> None:
    # 4 rows per micro-batch × 2 = 8 rows per step; share 0.25 → 2 rehearsal rows, 6 new ones. The 16 new
    # rows fill 3 steps; the last holds 4 of them and round(2 · 4/6) = 1 rehearsal row.
    config = recipe(
        "data.validation_fraction=0",
        "training.gradient_accumulation_steps=2",
        "training.max_steps=3",
        "continual.rehearsal_share=0.25",
    )
    records: list[dict[str, Any]] = []

    train(config, show_progress=False, log=lambda _: None, on_step=records.append)

    assert [r["rehearsal_rows"] for r in records] == [2, 2, 1]
    assert all("replay_rows" not in r for r in records)


def test_rehearsal_and_replay_share_each_step(
    recipe: RecipeFactory, random_adapter: Path, tmp_path: Path
) -> None:
    old_file = write_jsonl(
        tmp_path / "old.jsonl", [{"prompt": f"o{i}", "completion": f"k{i}"} for i in range(9)]
    )
    config = recipe(
        "model.parent=rand",
        "output.name=child",
        "data.validation_fraction=0",
        "training.gradient_accumulation_steps=2",
        "training.max_steps=2",
        "continual.strategy=replay",
        "continual.replay_share=0.25",
        f"continual.replay_paths=[{old_file}]",
        "continual.rehearsal_share=0.125",
    )
    records: list[dict[str, Any]] = []

    train(config, show_progress=False, log=lambda _: None, on_step=records.append)

    assert [(r["replay_rows"], r["rehearsal_rows"]) for r in records] == [(2, 1), (2, 1)]
