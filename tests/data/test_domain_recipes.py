"""The domain recipes (`configs/healthcare.yaml`, `legal.yaml`, `finance.yaml`) train and score their
own generated task: their data paths are where `make demo-<domain>` writes the task, and the rows
written there are what the recipe reads and scores. (Every recipe also trains a step on a tiny model:
tests/training/test_loop.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.data import read_examples
from lorafleet.data.example_tasks import TASKS
from lorafleet.training import load_config
from tests.helpers import invoke

ROOT = Path(__file__).parents[2]
DOMAINS = ("healthcare", "legal", "finance")


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_recipe_trains_and_scores_its_task(domain: str) -> None:
    config = load_config(ROOT / "configs" / f"{domain}.yaml")

    assert Path(config.data.path) == Path("data", domain, "train.jsonl")
    assert config.eval.test_path is not None and Path(config.eval.test_path) == Path(
        "data", domain, "test.jsonl"
    )
    assert (config.eval.metric, config.eval.compare_base) == ("json_fields", True)
    assert config.data.system_prompt and config.output.name == domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_make_target_writes_what_the_recipe_reads(domain: str, tmp_path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert f"demo-{domain}" in makefile and "data example data/$* --task $*" in makefile
    assert "train configs/$*.yaml" in makefile

    result = invoke(
        "data", "example", str(tmp_path / "data" / domain), "--task", domain, "--train-rows", "20"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    config = load_config(ROOT / "configs" / f"{domain}.yaml")
    read = read_examples(tmp_path / config.data.path)
    test_rows = (tmp_path / str(config.eval.test_path)).read_text().splitlines()

    assert read.format == "prompt_completion" and len(read.examples) == 20
    assert len(test_rows) == 200 >= config.eval.generation_rows
    assert all(
        list(json.loads(json.loads(line)["completion"])) == list(TASKS[domain].fields) for line in test_rows
    )
