"""`prepare_data`: read → split → tokenize, with statistics; `batches`: one epoch of collated batches."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lorafleet.data.config import DataConfig
from lorafleet.data.formats import Example, read_examples, with_system_prompt
from lorafleet.data.packing import PackedSequence, collate, pack_examples
from lorafleet.data.tokenize import TokenizedExample, tokenize_examples
from lorafleet.errors import DataError

GROUP_BATCHES = 32  # length grouping sorts windows of this many batches' worth of shuffled examples


@dataclass(frozen=True)
class DataStats:
    """Counts and token lengths of one split, after truncation."""

    rows: int  # examples kept
    skipped: int  # malformed rows dropped (skip_bad_rows)
    truncated: int  # rows longer than max_length (kept with their first max_length tokens, or dropped)
    dropped: int  # truncated rows left with no labelled token, so not kept
    tokens: int  # input tokens of the kept examples
    label_tokens: int  # tokens that carry loss
    length_p50: int
    length_p90: int
    length_p99: int
    length_max: int

    def as_dict(self) -> dict[str, int]:
        """The statistics as a plain dict (for JSON and logs)."""
        return asdict(self)


@dataclass
class PreparedData:
    """Tokenized train and validation examples, the validation rows for generation, and statistics."""

    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    eval_examples: list[Example]  # the validation rows as read, for evaluation by generation
    train_stats: DataStats
    validation_stats: DataStats
    format: str
    notes: tuple[str, ...] = ()


def prepare_data(config: DataConfig, tokenizer: Any) -> PreparedData:
    """Read `config.path` (and `validation_path`), scrub them first when asked, split, and tokenize every
    row with `tokenizer`."""
    scrub_notes: list[str] = []
    if config.scrub:
        config, scrub_notes = scrubbed_config(config)
    train_read = read_examples(
        config.path, format=config.format, skip_bad_rows=config.skip_bad_rows, max_rows=config.max_rows
    )
    train_rows = [with_system_prompt(e, config.system_prompt) for e in train_read.examples]
    validation_skipped, notes = 0, [*scrub_notes, *train_read.notes]
    if config.validation_path is not None:
        held_out = read_examples(
            config.validation_path,
            format=train_read.format,
            skip_bad_rows=config.skip_bad_rows,
            max_rows=config.max_rows,
        )
        validation_rows = [with_system_prompt(e, config.system_prompt) for e in held_out.examples]
        validation_skipped, notes = held_out.skipped, [*notes, *held_out.notes]
    else:
        train_index, validation_index = split_indices(
            len(train_rows), config.validation_fraction, config.seed
        )
        validation_rows = [train_rows[i] for i in validation_index]
        train_rows = [train_rows[i] for i in train_index]

    train, train_failed, train_dropped = _tokenize_all(train_rows, tokenizer, config)
    validation, validation_failed, validation_dropped = _tokenize_all(validation_rows, tokenizer, config)
    if not train:
        raise DataError(
            f"{config.path}: no training examples left: {train_dropped} lost every labelled token to "
            f"truncation at max_length {config.max_length}, {len(train_failed)} failed to tokenize; "
            "raise max_length or shorten the prompts"
        )
    return PreparedData(
        train=train,
        validation=validation,
        eval_examples=[e for e in validation_rows if e.source not in validation_failed],
        train_stats=dataset_stats(
            train, skipped=train_read.skipped + len(train_failed), dropped=train_dropped
        ),
        validation_stats=dataset_stats(
            validation, skipped=validation_skipped + len(validation_failed), dropped=validation_dropped
        ),
        format=train_read.format,
        notes=tuple(notes),
    )


def scrubbed_config(config: DataConfig) -> tuple[DataConfig, list[str]]:
    """`config` reading scrubbed copies of its files (made once per file content under
    `$LORAFLEET_HOME/scrubbed/<sha256>/`, audit report beside), and a note per file saying so."""
    from lorafleet.privacy.scrub import FieldChoice, report_path, scrub_jsonl

    paths, notes = {}, []
    for key, source in _scrubbed_files(config):
        target = scrubbed_copy(source)
        if not report_path(target).is_file():
            scrub_jsonl(source, target, choice=FieldChoice(), overwrite=True)
        paths[key] = str(target)
        notes.append(f"scrubbed {source} → {target} (audit report {report_path(target)})")
    return config.model_copy(update={**paths, "scrub": False}), notes


def scrub_reports(config: DataConfig) -> dict[str, dict[str, Any]]:
    """The audit reports of the scrubbed copies a `scrub: true` config trained on, by field (`path`,
    `validation_path`); empty when it does not scrub."""
    import json

    from lorafleet.privacy.scrub import report_path

    reports = {}
    for key, source in _scrubbed_files(config):
        report = report_path(scrubbed_copy(source))
        if report.is_file():
            reports[key] = json.loads(report.read_text(encoding="utf-8"))
    return reports


def scrubbed_copy(source: Path) -> Path:
    """Where the scrubbed copy of `source` lives: `$LORAFLEET_HOME/scrubbed/<its sha256>/<its name>`."""
    from lorafleet.home import lorafleet_home

    with source.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return lorafleet_home() / "scrubbed" / digest / source.name


def _scrubbed_files(config: DataConfig) -> list[tuple[str, Path]]:
    """(field, file) of each data file a `scrub: true` config names; `DataError` naming a missing one."""
    if not config.scrub:
        return []
    files = []
    for key in ("path", "validation_path"):
        source = getattr(config, key)
        if source is None:
            continue
        if not Path(source).is_file():
            raise DataError(f"data.{key}: {source}: no such file to scrub", field=f"data.{key}")
        files.append((key, Path(source)))
    return files


def _tokenize_all(
    rows: list[Example], tokenizer: Any, config: DataConfig
) -> tuple[list[TokenizedExample], set[str], int]:
    """Rows that keep a labelled token, sources of rows that failed (skip_bad_rows), count dropped."""
    kept: list[TokenizedExample] = []
    failed: set[str] = set()
    dropped = 0
    tokenized = tokenize_examples(
        rows, tokenizer, max_length=config.max_length, train_on_inputs=config.train_on_inputs
    )
    for example, result in zip(rows, tokenized, strict=True):
        if isinstance(result, DataError):
            if not config.skip_bad_rows:
                raise result
            failed.add(example.source)
        elif result.label_tokens == 0:
            dropped += 1
        else:
            kept.append(result)
    return kept, failed, dropped


def split_indices(rows: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices, each ascending: a seeded permutation's first round(rows·fraction)
    rows are held out (at least one when fraction > 0, never all). Same inputs → same split, in any process.
    """
    held = 0 if fraction <= 0 or rows < 2 else min(rows - 1, max(1, round(rows * fraction)))
    order = list(range(rows))
    random.Random(seed).shuffle(order)  # Python's Mersenne Twister: the same on every platform
    validation = sorted(order[:held])
    chosen = set(validation)
    return [i for i in range(rows) if i not in chosen], validation


def dataset_stats(examples: Sequence[TokenizedExample], *, skipped: int = 0, dropped: int = 0) -> DataStats:
    """Statistics of `examples`; `dropped` rows count as truncated too. Percentiles are nearest-rank."""
    lengths = sorted(len(e) for e in examples)

    def percentile(p: float) -> int:
        return lengths[max(0, math.ceil(p / 100 * len(lengths)) - 1)] if lengths else 0

    return DataStats(
        rows=len(examples),
        skipped=skipped,
        truncated=sum(e.truncated for e in examples) + dropped,
        dropped=dropped,
        tokens=sum(lengths),
        label_tokens=sum(e.label_tokens for e in examples),
        length_p50=percentile(50),
        length_p90=percentile(90),
        length_p99=percentile(99),
        length_max=lengths[-1] if lengths else 0,
    )


def batches(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
    max_length: int,
    packing: bool,
    shuffle: bool,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """One epoch of collated batches, the same for the same (seed, epoch).

    Packing: examples are packed into `max_length` sequences (best-fit decreasing), shuffled when asked,
    and `batch_size` packed sequences make a batch (keys input_ids, labels, position_ids). Otherwise
    `batch_size` examples make a batch (keys input_ids, labels, attention_mask); with `shuffle` and
    `group_by_length`, each window of GROUP_BATCHES batches' worth of shuffled examples is sorted by
    length before being cut into batches, whose order is then shuffled: batches hold similar lengths
    (less padding) and stay random. Without `shuffle` the order is kept.
    """
    groups = _batch_rows(
        examples,
        batch_size=batch_size,
        max_length=max_length,
        packing=packing,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        group_by_length=group_by_length,
    )
    return [collate(group, pad_token_id=pad_token_id) for group in groups]


def _batch_rows(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    max_length: int,
    packing: bool,
    shuffle: bool,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
) -> list[list[TokenizedExample | PackedSequence]]:
    """The rows of each batch of `batches`, before collation."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    rows: list[TokenizedExample | PackedSequence]
    groups: list[list[TokenizedExample | PackedSequence]]
    if packing:
        rows = list(pack_examples([examples[i] for i in order], max_length))
        if shuffle:
            rng.shuffle(rows)
        groups = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    elif shuffle and group_by_length:
        window = batch_size * GROUP_BATCHES
        groups = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(examples[i]))
            groups += [
                [examples[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)
            ]
        rng.shuffle(groups)
    else:
        rows = [examples[i] for i in order]
        groups = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return groups


def packing_gain(examples: Sequence[TokenizedExample], *, batch_size: int, max_length: int) -> float:
    """The share of token positions (padding included) that packing saves over batching by length, for one
    epoch of `examples` in batches of `batch_size`: 0.3 means packing computes 30% fewer positions, a
    negative value that it computes more (rows too long to share a sequence gain nothing from it and are
    padded further). Positions are what a step's matrix products cost; packing's mask adds to that, so it
    pays for itself only when this is clearly above zero. Counted from the batches' rows (`collate` pads
    each batch to its longest row), without building their tensors."""
    if not examples:
        return 0.0

    def positions(packing: bool) -> int:
        groups = _batch_rows(
            examples,
            batch_size=batch_size,
            max_length=max_length,
            packing=packing,
            shuffle=True,
            seed=0,
            epoch=0,
        )
        return sum(len(group) * max(len(row) for row in group) for group in groups)

    return 1.0 - positions(True) / positions(False)
