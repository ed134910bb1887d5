"""Scrubbing a JSONL dataset: every row is a document whose string fields are searched together and
whose PHI is replaced by that document's pseudonyms (Presidio's anonymizer, our `Pseudonymizer` as the
operator); an audit report (`audit`) goes beside the output.

Fields the caller names in `skip_fields` are searched too but left as they are: what is found there is
reported as unscrubbed (in the report and by the caller), never silently passed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.errors import DataError
from lorafleet.files import atomic_file
from lorafleet.privacy.analyzer import Finding, find_entities
from lorafleet.privacy.audit import AuditTrail, FieldCount
from lorafleet.privacy.pseudonyms import Pseudonymizer

SECRET_ENV = "LORAFLEET_SCRUB_SECRET"


@dataclass(frozen=True)
class FieldChoice:
    """Which top-level fields of a row are scrubbed: `only` (all when None) minus `skip`."""

    only: frozenset[str] | None = None
    skip: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, fields: list[str] | None, skip_fields: list[str] | None) -> FieldChoice:
        """From the CLI's or a caller's lists; `DataError` when a field is both scrubbed and skipped."""
        only = frozenset(fields) if fields else None
        skip = frozenset(skip_fields or ())
        both = sorted((only or frozenset()) & skip)
        if both:
            raise DataError(f"--fields and --skip-fields both name {', '.join(both)}; name each field once")
        return cls(only, skip)

    def scrubs(self, name: str) -> bool:
        return name not in self.skip and (self.only is None or name in self.only)


def scrub_secret() -> tuple[bytes, str]:
    """The pseudonym secret from `LORAFLEET_SCRUB_SECRET` (reproducible runs), else a random one."""
    given = os.environ.get(SECRET_ENV)
    if given:
        return given.encode(), "environment"
    return os.urandom(32), "random"


def scrub_row(
    row: dict[str, Any], secret: bytes, choice: FieldChoice
) -> tuple[dict[str, Any], list[FieldCount], list[FieldCount]]:
    """The row with PHI replaced in its chosen fields, the counts replaced, and the counts left in
    skipped fields."""
    leaves = list(_string_leaves(row))
    findings = find_entities([text for _, _, text in leaves])
    document = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    pseudonyms = Pseudonymizer(secret, document)
    pseudonyms.learn_names(
        [text[f.start : f.end] for (_, _, text), found in zip(leaves, findings, strict=True) for f in found]
    )
    scrubbed, kept = Counter[tuple[str, str, str]](), Counter[tuple[str, str, str]]()
    out = json.loads(json.dumps(row))
    for (name, path, text), found in zip(leaves, findings, strict=True):
        counts = scrubbed if choice.scrubs(name) else kept
        counts.update((name, f.entity_type, f.recognizer) for f in found)
        if found and choice.scrubs(name):
            _set(out, path, anonymize(text, found, pseudonyms))
    return out, _counts(scrubbed), _counts(kept)


def anonymize(text: str, findings: list[Finding], pseudonyms: Pseudonymizer) -> str:
    """`text` with each finding replaced by its pseudonym, through Presidio's anonymizer."""
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    def operator(kind: str) -> OperatorConfig:
        return OperatorConfig("custom", {"lambda": lambda value: pseudonyms.replace(kind, value)})

    results = [RecognizerResult(f.entity_type, f.start, f.end, f.score) for f in findings]
    operators = {kind: operator(kind) for kind in {f.entity_type for f in findings}}
    return str(AnonymizerEngine().anonymize(text, results, operators).text)


def scrub_jsonl(
    source: Path, target: Path, *, choice: FieldChoice, overwrite: bool = False
) -> dict[str, Any]:
    """Scrub every row of `source` into `target` and write the audit report beside it
    (`report_path(target)`); both are written whole or not at all. Returns the report."""
    from lorafleet.errors import AlreadyExistsError

    rows = read_jsonl(source)
    _check_fields(source, rows, choice)
    if target.resolve() == source.resolve():
        raise DataError(f"{target}: the output would overwrite the input; write the scrubbed rows elsewhere")
    for path in (target, report_path(target)):
        if path.exists() and not overwrite:
            raise AlreadyExistsError(f"{path} already exists; choose another path or pass --overwrite")
    secret, secret_source = scrub_secret()
    trail = AuditTrail()
    with atomic_file(target) as written:
        with written.open("w", encoding="utf-8") as out:
            for index, row in enumerate(rows):
                new_row, scrubbed, kept = scrub_row(row, secret, choice)
                trail.append(index, scrubbed, kept)
                out.write(json.dumps(new_row, ensure_ascii=False) + "\n")
        output_sha256 = hashlib.sha256(written.read_bytes()).hexdigest()
        report = trail.report(
            source=source.name,
            output=target.name,
            output_sha256=output_sha256,
            fields=sorted(choice.only) if choice.only is not None else "all",
            skip_fields=sorted(choice.skip),
            secret=secret_source,
        )
        with atomic_file(report_path(target)) as report_file:
            report_file.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def report_path(target: Path) -> Path:
    """Where the audit report of scrubbed file `target` goes: `train.jsonl` → `train.scrub.json`."""
    return target.with_name(f"{target.stem}.scrub.json")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file, each a JSON object; `DataError` naming `file:line` otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; name a .jsonl file of rows to scrub")
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: scrubbing reads .jsonl files (one JSON object per line)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a JSON {type(row).__name__}, not an object with fields")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows to scrub")
    return rows


def _check_fields(source: Path, rows: list[dict[str, Any]], choice: FieldChoice) -> None:
    present = {name for row in rows for name in row}
    named = (choice.only or frozenset()) | choice.skip
    missing = sorted(named - present)
    if missing:
        raise DataError(
            f"{source}: no row has field {', '.join(missing)}; its fields are {', '.join(sorted(present))}"
        )


def _string_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, tuple[Any, ...], str]]:
    """(top-level field, path, text) of every string inside a row (chat messages included)."""
    if isinstance(value, str):
        yield str(path[0]), path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_leaves(item, (*path, index))


def _set(row: Any, path: tuple[Any, ...], text: str) -> None:
    for key in path[:-1]:
        row = row[key]
    row[path[-1]] = text


def _counts(counter: Counter[tuple[str, str, str]]) -> list[FieldCount]:
    return [FieldCount(f, kind, recognizer, n) for (f, kind, recognizer), n in sorted(counter.items())]
