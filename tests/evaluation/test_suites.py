"""Suites on the tiny llama: each metric's score and details, 1/perplexity against the model's own loss,
an exact-match suite whose references are the model's own answers, and bad suites named by file:line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lorafleet.data import read_examples
from lorafleet.errors import ConfigError, DataError
from lorafleet.evaluation.suites import SUITE_METRICS, Suite, SuiteScoringError, score_suite, score_suites
from lorafleet.training.evaluate import generate_answers
from tests.helpers import write_jsonl

Tiny = tuple[nn.Module, Any]
RECORDS = [{"prompt": f"id {i}", "completion": json.dumps({"n": i, "ok": i % 2 == 0})} for i in range(6)]
QA = [{"prompt": f"q{i}", "completion": f"answer {i}"} for i in range(6)]
FAST = {"max_new_tokens": 12, "batch_size": 4}


def test_json_fields_scores_field_accuracy_with_full_details(tmp_path: Path, tiny: Tiny) -> None:
    path = write_jsonl(tmp_path / "records.jsonl", RECORDS)

    scored = score_suite(*tiny, path, "json_fields", **FAST)

    details = scored["details"]
    assert set(details) == {"rows", "valid_json", "field_accuracy", "exact_match", "per_field"}
    assert details["rows"] == len(RECORDS)
    assert scored["score"] == details["field_accuracy"] and 0.0 <= scored["score"] <= 1.0


def test_exact_match_counts_answers_equal_to_their_reference(tmp_path: Path, tiny: Tiny) -> None:
    # References are the model's own greedy answers for the first half of the rows, something else after.
    model, tokenizer = tiny
    probe = write_jsonl(tmp_path / "probe.jsonl", QA)
    answers = generate_answers(model, tokenizer, read_examples(probe).examples, **FAST)
    rows = [
        {"prompt": row["prompt"], "completion": answer if i < 3 else answer + " (not this)"}
        for i, (row, answer) in enumerate(zip(QA, answers, strict=True))
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)

    scored = score_suite(model, tokenizer, path, "exact_match", **FAST)

    assert scored == {"score": 0.5, "details": {"rows": 6, "exact_match": 0.5}}


def test_perplexity_score_is_one_over_the_perplexity_of_the_answers(tmp_path: Path, tiny: Tiny) -> None:
    model, tokenizer = tiny
    path = write_jsonl(tmp_path / "qa.jsonl", QA[:1])

    scored = score_suite(model, tokenizer, path, "perplexity", **FAST)

    # Reference: HF's own loss with the prompt masked, on the chat-templated row.
    prompt = tokenizer("<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tokenizer("answer 0<|im_end|>", add_special_tokens=False)
    prompt, answer = prompt["input_ids"], answer["input_ids"]
    ids = torch.tensor([[*prompt, *answer]])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=labels).loss)
    details = scored["details"]
    assert details["rows"] == 1
    torch.testing.assert_close(details["loss"], loss)
    torch.testing.assert_close(details["perplexity"], math.exp(loss))
    assert scored["score"] == 1.0 / details["perplexity"]


def test_score_suites_keys_each_suite_by_id_in_the_contract_shape(tmp_path: Path, tiny: Tiny) -> None:
    suites = [
        Suite("suite-a", "tickets", "json_fields", write_jsonl(tmp_path / "a.jsonl", RECORDS)),
        Suite("suite-b", "notes", "perplexity", write_jsonl(tmp_path / "b.jsonl", QA)),
    ]

    scores = score_suites(*tiny, suites, **FAST)

    assert list(scores) == ["suite-a", "suite-b"]
    for suite in suites:
        entry = scores[suite.id]
        assert set(entry) == {"adapter", "metric", "score", "details"}
        assert (entry["adapter"], entry["metric"]) == (suite.adapter, suite.metric)
        assert 0.0 <= entry["score"] <= 1.0


def test_unknown_metric_is_named(tmp_path: Path, tiny: Tiny) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", QA)

    with pytest.raises(ConfigError, match="'bleu'") as err:
        score_suite(*tiny, path, "bleu")
    assert all(metric in str(err.value) for metric in SUITE_METRICS)


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([QA[0], {"prompt": "q1"}], "bad.jsonl:2"),  # a row without its answer
        ([RECORDS[0], {"prompt": "id 1", "completion": "not json"}], "bad.jsonl:2: the reference answer"),
    ],
)
def test_a_bad_row_names_the_suite_and_its_file_and_line(
    tmp_path: Path, tiny: Tiny, rows: list[dict[str, Any]], needle: str
) -> None:
    suite = Suite("suite-x", "tickets", "json_fields", write_jsonl(tmp_path / "bad.jsonl", rows))

    with pytest.raises(DataError, match=needle) as err:
        score_suites(*tiny, [suite], **FAST)
    assert str(err.value).startswith("suite suite-x (adapter tickets): ")


def test_a_model_failure_names_the_suite(tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny
    suite = Suite("suite-x", "tickets", "perplexity", write_jsonl(tmp_path / "qa.jsonl", QA))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(SuiteScoringError, match=r"suite suite-x .*RuntimeError: CUDA out of memory"):
        score_suites(model, tokenizer, [suite], **FAST)
