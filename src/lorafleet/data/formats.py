"""Read training rows from JSONL/JSON, CSV, Parquet or a `datasets` directory into checked `Example`s.

Four row formats, named or detected from the first usable row's keys:

    text               {"text": "..."}
    prompt_completion  {"prompt": "...", "completion": "..."}       -> user, assistant
    alpaca             {"instruction", "input" (optional), "output"} -> user = instruction + "\\n\\n" + input
    chat               {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

Chat messages follow OpenAI's fine-tuning format: besides `role` and `content` a message may have a
`name` (accepted, not rendered), and an assistant message a `weight` of 0 (not trained on: its tokens
are labelled like the prompt's) or 1 (the default). Other keys (`tool_calls`, `function_call`, ...) are
refused, since the row would train on something else than what it says. A null value counts as absent.

Every later row must match the same format. A bad row fails with `file:line: what is wrong` (CSV: the
header is line 1; Parquet and `datasets` directories: `file:row N`, 0-based), or is dropped and counted.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from lorafleet.errors import DataError

ROW_FORMATS = ("text", "prompt_completion", "alpaca", "chat")
REQUIRED_KEYS = {
    "chat": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")  # OpenAI's, less tool calls and function calls
SUPPORTED = ".jsonl, .json (JSON lines or one array), .csv, .parquet, or a datasets save_to_disk directory"
_FORMAT_HELP = (
    "text {text}, prompt_completion {prompt, completion}, alpaca {instruction, output}, chat {messages}"
)


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str  # system, user or assistant
    content: str
    trained: bool = True  # an assistant turn carries loss; False for OpenAI's `"weight": 0`

    def as_dict(self) -> dict[str, str]:
        """The `{"role", "content"}` mapping chat templates expect."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Example:
    """One training row: plain `text`, or `messages` ending with the assistant turn to learn."""

    source: str  # where the row came from: "file.jsonl:12", "data.parquet:row 3"
    text: str | None = None
    messages: tuple[Message, ...] = ()

    @property
    def is_chat(self) -> bool:
        """Whether the row is a conversation (prompt/completion and alpaca rows are too)."""
        return bool(self.messages)

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Every turn before the final assistant turn: what a model is given when evaluated by generation."""
        return self.messages[:-1] if self.reference is not None else self.messages

    @property
    def reference(self) -> str | None:
        """The final assistant turn's content: the expected answer (None for text rows)."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return None


@dataclass(frozen=True)
class ReadResult:
    """The usable rows of a file, how many bad rows were skipped, and the row format used."""

    examples: list[Example]
    skipped: int
    format: str
    notes: tuple[str, ...] = ()  # things the user should know, e.g. which split of a DatasetDict was used


class _RowError(ValueError):
    """What is wrong with one row (the caller adds `file:line`)."""


class _MissingKeys(_RowError):
    """The row lacks a key its format needs (perhaps it is in another format than the first row, or a
    CSV's first line is a row rather than the header naming the columns)."""


@dataclass(frozen=True)
class _Unreadable:
    """A row that could not even be parsed (bad JSON, bad UTF-8, wrong field count)."""

    reason: str


def with_system_prompt(example: Example, prompt: str | None) -> Example:
    """`example` with a leading system message `prompt`, unless it is a text row or already has one."""
    if prompt is None or not example.messages or example.messages[0].role == "system":
        return example
    return replace(example, messages=(Message("system", prompt), *example.messages))


def read_examples(
    path: str | Path, *, format: str = "auto", skip_bad_rows: bool = False, max_rows: int | None = None
) -> ReadResult:
    """Read and check every row of `path`; raise `DataError` naming `file:line` for the first bad one.

    With `skip_bad_rows`, bad rows are dropped and counted instead. `max_rows` stops after that many
    usable rows. A file with no usable row fails.
    """
    if format != "auto" and format not in ROW_FORMATS:
        raise DataError(f"format {format!r} is not one of auto, {', '.join(ROW_FORMATS)}")
    path = Path(path)
    rows, notes = _open_rows(path)
    fixed = None if format == "auto" else format
    detected_at = ""
    examples: list[Example] = []
    skipped = 0
    for source, row in rows:
        try:
            if isinstance(row, _Unreadable):
                raise _RowError(row.reason)
            if not isinstance(row, Mapping):
                raise _RowError(f"the row is a JSON {type(row).__name__}, not an object with named fields")
            row_format = fixed or detect_format(row)
            example = parse_row(row, row_format, source)
        except _RowError as err:
            if not skip_bad_rows:
                detected = isinstance(err, _MissingKeys) and detected_at
                hint = f" (format {fixed} detected at {detected_at})" if detected else ""
                if isinstance(err, _MissingKeys):
                    hint += _csv_header_hint(path)
                raise DataError(f"{source}: {err}{hint}") from None
            skipped += 1
            continue
        if fixed is None:
            fixed, detected_at = row_format, source
        examples.append(example)
        if max_rows is not None and len(examples) >= max_rows:
            break
    if not examples:
        raise DataError(f"{path}: no usable rows ({skipped} skipped){_csv_header_hint(path)}")
    assert fixed is not None
    return ReadResult(examples=examples, skipped=skipped, format=fixed, notes=tuple(notes))


def detect_format(row: Mapping[str, object]) -> str:
    """The one row format whose required keys `row` holds (keys whose value is null do not count, unless
    only they make a match: then that format is returned, and `parse_row` says which value is null)."""
    present = {key for key, value in row.items() if value is not None}
    matches = [name for name, keys in REQUIRED_KEYS.items() if present.issuperset(keys)]
    if not matches:
        with_nulls = [name for name, keys in REQUIRED_KEYS.items() if set(row).issuperset(keys)]
        if len(with_nulls) == 1:
            return with_nulls[0]
        raise _MissingKeys(f"keys {sorted(present)} match no row format; expected one of {_FORMAT_HELP}")
    if len(matches) > 1:
        raise _RowError(
            f"keys {sorted(present)} fit several formats ({', '.join(matches)}); name one with format"
        )
    return matches[0]


def parse_row(row: Mapping[str, object], format: str, source: str) -> Example:
    """Check one row against `format` and make it an `Example`; raise `_RowError` saying what is wrong."""
    missing = [key for key in REQUIRED_KEYS[format] if key not in row]
    if missing:
        raise _MissingKeys(
            f"missing {', '.join(map(repr, missing))} for format {format} (keys: {sorted(row)})"
        )
    null = [key for key in REQUIRED_KEYS[format] if row[key] is None]
    if null:
        raise _RowError(f"{', '.join(map(repr, null))} is null; format {format} needs a value there")
    if format == "text":
        return Example(source, text=_string(row, "text", non_empty=True))
    if format == "prompt_completion":
        prompt, completion = _string(row, "prompt"), _string(row, "completion", non_empty=True)
        return Example(source, messages=(Message("user", prompt), Message("assistant", completion)))
    if format == "alpaca":
        instruction = _string(row, "instruction", non_empty=True)
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise _RowError(f"'input' must be a string (got {type(extra).__name__})")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        output = _string(row, "output", non_empty=True)
        return Example(source, messages=(Message("user", user), Message("assistant", output)))
    return Example(source, messages=_messages(row["messages"]))


def _string(row: Mapping[str, object], key: str, *, non_empty: bool = False) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(f"{key!r} must be a string (got {type(value).__name__})")
    if non_empty and not value.strip():
        raise _RowError(f"{key!r} is empty")
    return value


def _messages(value: object) -> tuple[Message, ...]:
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _RowError(f"'messages' is text but not a JSON list: {err.msg}") from None
    if not isinstance(value, list) or not value:
        raise _RowError("'messages' must be a non-empty list of {role, content} objects")
    messages: list[Message] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _RowError(f"messages[{i}] is a {type(item).__name__}, not a {{role, content}} object")
        fields = {key: field for key, field in item.items() if field is not None}  # Parquet fills in nulls
        unknown = [key for key in fields if key not in MESSAGE_KEYS]
        if unknown:
            raise _RowError(
                f"messages[{i}] has key {', '.join(map(repr, unknown))}, which lorafleet does not train on "
                f"(a message may have {', '.join(MESSAGE_KEYS)}; tool and function calls are not supported)"
            )
        role, content = fields.get("role"), fields.get("content")
        if role not in ROLES:
            raise _RowError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise _RowError(f"messages[{i}].content must be a string (got {type(content).__name__})")
        if role == "system" and i > 0:
            raise _RowError(f"messages[{i}]: a system message may only come first")
        if role == "assistant" and all(m.role == "system" for m in messages):
            raise _RowError(f"messages[{i}]: an assistant turn needs a user turn before it")
        messages.append(Message(role, content, trained=_weight(fields, i)))
    if messages[-1].role != "assistant":
        raise _RowError("the last message must be an assistant turn (the reply to learn)")
    if not messages[-1].content.strip():
        raise _RowError(f"messages[{len(messages) - 1}]: the final assistant message is empty")
    if not any(m.role == "assistant" and m.trained for m in messages):
        raise _RowError("every assistant message has 'weight': 0, so the row teaches nothing")
    return tuple(messages)


def _weight(message: Mapping[str, object], i: int) -> bool:
    """Whether message `i` is trained on: OpenAI's `weight`, 0 or 1 on assistant messages, 1 if absent."""
    if "weight" not in message:
        return True
    weight = message["weight"]
    if message["role"] != "assistant":
        raise _RowError(
            f"messages[{i}].weight: only assistant messages have a weight (this one is {message['role']})"
        )
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _RowError(f"messages[{i}].weight must be 0 (not trained on) or 1 (got {weight!r})")
    return weight == 1


def _open_rows(path: Path) -> tuple[Iterator[tuple[str, object]], list[str]]:
    """Rows of `path` with their `file:line` sources, and notes for the user; fails early on a bad path."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return _dataset_dir_rows(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and not _starts_with_bracket(path)):
        return _json_lines(path), []
    if suffix == ".json":
        return _json_array(path), []
    if suffix == ".csv":
        return _csv_rows(path), []
    if suffix == ".parquet":
        return _table_rows(_load_parquet(path), str(path)), []
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use {SUPPORTED}")


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    """One JSON value per line. A file that starts with `[` holds one array (often pretty-printed over many
    lines), which no line-by-line reading can make sense of: that fails at once, saying to name it .json."""
    first = True
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield source, _Unreadable(f"not UTF-8 text (byte {err.start} of the line)")
                continue
            if not line.strip():
                continue
            if first and line.lstrip().startswith("["):
                raise DataError(
                    f"{source}: the file is one JSON array, not JSON lines (one object per line); "
                    f"save it as {path.with_suffix('.json').name}, which is read as an array"
                )
            first = False
            try:
                yield source, json.loads(line)
            except json.JSONDecodeError as err:
                yield source, _Unreadable(f"invalid JSON: {err.msg} (column {err.colno})")


def _json_array(path: Path) -> Iterator[tuple[str, object]]:
    """Elements of a file holding one JSON array, each with the line it starts on."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    while True:
        start = _skip_space(text, pos)
        line += text.count("\n", pos, start)
        if text.startswith("]", start):
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as err:  # the rest of an array cannot be resynchronised: always fatal
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        yield f"{path}:{line}", value
        line += text.count("\n", start, end)
        pos = _skip_space(text, end)
        line += text.count("\n", end, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise DataError(f"{path}:{line}: invalid JSON: expected ',' or ']' after an array element")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _csv_rows(path: Path) -> Iterator[tuple[str, object]]:
    """CSV rows as `{column: text}`; the source is the line each record starts on (header = line 1)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) != len(header) or not all(name.strip() for name in header):
                raise DataError(f"{path}:1: the header needs distinct, non-empty column names (got {header})")
            start = reader.line_num + 1
            for record in reader:
                source, start = f"{path}:{start}", reader.line_num + 1
                if not any(cell.strip() for cell in record):
                    continue
                if len(record) != len(header):
                    yield source, _Unreadable(f"{len(record)} fields, but the header has {len(header)}")
                else:
                    yield source, dict(zip(header, record, strict=True))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _csv_header_hint(path: Path) -> str:
    """For a CSV whose line 1 names no format's columns, a hint that it was read as the header (else "").

    A CSV without a header loses its first row to the header, and its rows then have that row's values
    as keys; the error about the next line would not say why.
    """
    if path.suffix.lower() != ".csv" or not path.is_file():
        return ""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            header = next(csv.reader(file), None)
    except (csv.Error, UnicodeDecodeError):
        return ""
    if header is None or any(set(header).issuperset(keys) for keys in REQUIRED_KEYS.values()):
        return ""
    return (
        f"; line 1 was read as the header (columns {', '.join(map(repr, header))}); if it is a row, add "
        "a first line naming the columns, e.g. prompt,completion"
    )


def _load_parquet(path: Path) -> Iterable[object]:
    import datasets

    with tempfile.TemporaryDirectory(prefix="lorafleet-parquet-") as cache, _quiet_datasets():
        try:
            return datasets.Dataset.from_parquet(str(path), keep_in_memory=True, cache_dir=cache)
        except Exception as err:  # pyarrow and datasets raise many types for a file that is not Parquet
            raise DataError(f"{path}: not a readable Parquet file: {_first_line(err)}") from None


def _dataset_dir_rows(path: Path) -> tuple[Iterator[tuple[str, object]], list[str]]:
    import datasets

    try:
        with _quiet_datasets():
            loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(
            f"{path}: not a datasets directory written by save_to_disk: {_first_line(err)}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(loaded)})")
        note = f"{path}: a DatasetDict; using its 'train' split (splits: {', '.join(loaded)})"
        return _table_rows(loaded["train"], f"{path}[train]"), [note]
    return _table_rows(loaded, str(path)), []


def _table_rows(table: Iterable[object], name: str) -> Iterator[tuple[str, object]]:
    for index, row in enumerate(table):
        yield f"{name}:row {index}", row


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide `datasets` progress bars and log lines while loading, and restore them after.

    On a file it cannot read, `datasets` logs an error line ("Failed to read schema ...") before raising;
    the exception becomes our one-line `DataError`, so the logged copy would only come first and twice.
    """
    import datasets

    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__
