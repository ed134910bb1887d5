"""Reading rows: format detection in every container, and bad files failing with `file:line`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.data import Example, Message, read_examples, with_system_prompt
from lorafleet.errors import ConfigError, DataError
from tests.data.conftest import ROWS, write_csv, write_jsonl, write_rows, write_table

KINDS = ["jsonl", "csv", "parquet", "dir"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("row_format", list(ROWS))
def test_detects_each_format_in_each_container(tmp_path: Path, kind: str, row_format: str) -> None:
    path = write_rows(tmp_path, ROWS[row_format], kind)
    result = read_examples(path)
    assert result.format == row_format
    assert result.skipped == 0
    assert len(result.examples) == 2
    # Named explicitly, the same rows read the same way.
    assert read_examples(path, format=row_format).examples == result.examples


def test_rows_become_messages(tmp_path: Path) -> None:
    alpaca = read_examples(write_jsonl(tmp_path / "a.jsonl", ROWS["alpaca"])).examples
    assert alpaca[0].messages == (Message("user", "Add the numbers.\n\n2 and 2"), Message("assistant", "4"))
    assert alpaca[1].messages[0] == Message("user", "Say hi.")  # empty input: instruction alone
    pc = read_examples(write_jsonl(tmp_path / "p.jsonl", ROWS["prompt_completion"])).examples[0]
    assert pc.is_chat and pc.prompt_messages == (Message("user", "2+2="),) and pc.reference == "4"
    text = read_examples(write_jsonl(tmp_path / "t.jsonl", ROWS["text"])).examples[0]
    assert text == Example(f"{tmp_path / 't.jsonl'}:1", text="The sky is blue.")
    assert not text.is_chat and text.reference is None


def test_sources_name_lines_and_rows(tmp_path: Path) -> None:
    jsonl = tmp_path / "gaps.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [e.source for e in read_examples(jsonl).examples] == [f"{jsonl}:1", f"{jsonl}:3"]
    csv_path = write_csv(tmp_path / "multi.csv", [{"text": "line one\nline two"}, {"text": "next"}])
    assert [e.source for e in read_examples(csv_path).examples] == [f"{csv_path}:2", f"{csv_path}:4"]
    parquet = write_table(tmp_path / "t.parquet", ROWS["text"], "parquet")
    assert read_examples(parquet).examples[1].source == f"{parquet}:row 1"


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ROWS["alpaca"], indent=2))
    result = read_examples(path)
    assert result.format == "alpaca"
    assert [e.source for e in result.examples] == [f"{path}:2", f"{path}:7"]


def test_dataset_dict_uses_train_split(tmp_path: Path) -> None:
    import datasets

    train = datasets.Dataset.from_list(ROWS["text"])
    datasets.DatasetDict({"train": train, "test": train.select([0])}).save_to_disk(str(tmp_path / "dd"))
    result = read_examples(tmp_path / "dd")
    assert len(result.examples) == 2
    assert "'train' split" in result.notes[0]
    assert result.examples[0].source == f"{tmp_path / 'dd'}[train]:row 0"


def test_max_rows_and_system_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", ROWS["chat"] * 3)
    examples = read_examples(path, max_rows=3).examples
    assert len(examples) == 3
    with_system = [with_system_prompt(e, "Answer in French.") for e in examples]
    assert with_system[0] == examples[0]  # already has a system message
    assert with_system[1].messages[0] == Message("system", "Answer in French.")
    assert with_system[1].messages[1:] == examples[1].messages


def _error(path: Path, *, format: str = "auto", skip_bad_rows: bool = False) -> str:
    with pytest.raises(DataError) as info:
        read_examples(path, format=format, skip_bad_rows=skip_bad_rows)
    assert isinstance(info.value, ConfigError)
    return str(info.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n')
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid JSON")
    assert "file.jsonl:3" in message and "detected" not in message


@pytest.mark.parametrize(
    ("bad_row", "needles"),
    [
        ({"prompt": "x", "answer": "y"}, ["missing 'completion'", "detected at"]),
        ({"prompt": "x", "completion": 4}, ["'completion' must be a string (got int)"]),
        ({"prompt": "x", "completion": "  "}, ["'completion' is empty"]),
        ([1, 2], ["JSON list, not an object"]),
    ],
)
def test_bad_prompt_completion_rows(tmp_path: Path, bad_row: object, needles: list[str]) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", [ROWS["prompt_completion"][0], bad_row])
    message = _error(path)
    assert message.startswith(f"{path}:2: ")
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role 'robot'"),
        ([], "non-empty list"),
        ([{"role": "user", "content": "a"}], "last message must be an assistant turn"),
        (
            [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}],
            "content must be a str",
        ),
        ([{"role": "assistant", "content": "b"}], "needs a user turn before it"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "b"},
            ],
            "system message may only come first",
        ),
    ],
)
def test_bad_chat_rows(tmp_path: Path, messages: list[object], needle: str) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [ROWS["chat"][0], {"messages": messages}])
    message = _error(path)
    assert message.startswith(f"{path}:2: ")
    assert needle in message


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "user", "content": "a", "weight": 0}, "messages[0].weight: only assistant messages"),
        ({"role": "assistant", "content": "b", "weight": 2}, "messages[1].weight must be 0 "),
        ({"role": "assistant", "content": "b", "weight": True}, "messages[1].weight must be 0 "),
        ({"role": "assistant", "content": "b", "weight": 0}, "every assistant message has 'weight': 0"),
        ({"role": "assistant", "content": None, "tool_calls": [{}]}, "messages[1] has key 'tool_calls'"),
        ({"role": "user", "content": "a", "function_call": {}}, "messages[0] has key 'function_call'"),
    ],
)
def test_openai_message_keys_and_weights_are_checked(
    tmp_path: Path, message: dict[str, object], needle: str
) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    messages[0 if message["role"] == "user" else 1] = message
    path = write_jsonl(tmp_path / "chat.jsonl", [ROWS["chat"][0], {"messages": messages}])
    error = _error(path)
    assert error.startswith(f"{path}:2: ")
    assert needle in error


def test_openai_weights_and_names_are_read(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "a", "name": "ann"},
        {"role": "assistant", "content": "b", "weight": 0},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "weight": 1},
    ]
    jsonl = write_jsonl(tmp_path / "w.jsonl", [{"messages": messages}])
    parquet = write_table(tmp_path / "w.parquet", [{"messages": messages}], "parquet")  # absent keys: null
    for path in (jsonl, parquet):
        read = read_examples(path).examples[0].messages
        assert [(m.content, m.trained) for m in read] == [("a", True), ("b", False), ("c", True), ("d", True)]


def test_unknown_keys_and_ambiguous_rows(tmp_path: Path) -> None:
    assert "match no row format" in _error(write_jsonl(tmp_path / "a.jsonl", [{"question": "q"}]))
    both = write_jsonl(tmp_path / "b.jsonl", [{"text": "t", "prompt": "p", "completion": "c"}])
    assert "fit several formats (prompt_completion, text)" in _error(both)
    assert read_examples(both, format="text").examples[0].text == "t"  # naming the format resolves it


def test_a_null_value_is_named_as_null_not_as_missing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "null.jsonl", [{"prompt": "2+2=", "completion": None}])
    for row_format in ("auto", "prompt_completion"):
        error = _error(path, format=row_format)
        assert error.startswith(f"{path}:1: 'completion' is null"), error
        assert "missing" not in error


def test_a_json_array_in_a_jsonl_file_says_to_save_it_as_json(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS["prompt_completion"], indent=2))  # pretty-printed: one array
    for skip in (False, True):  # no line of it is a row: skipping bad rows would skip every line
        error = _error(path, skip_bad_rows=skip)
        assert error.startswith(f"{path}:1: the file is one JSON array, not JSON lines"), error
        assert "save it as rows.json" in error
    (tmp_path / "rows.json").write_text(path.read_text())
    assert len(read_examples(tmp_path / "rows.json").examples) == 2


def test_a_csv_without_a_header_says_line_1_was_read_as_the_header(tmp_path: Path) -> None:
    path = tmp_path / "no_header.csv"
    path.write_text("What is 2+2?,4\nWhat is 3+3?,6\n")
    for row_format in ("auto", "prompt_completion"):
        error = _error(path, format=row_format)
        assert error.startswith(f"{path}:2: "), error
        assert "line 1 was read as the header (columns 'What is 2+2?', '4')" in error
        assert "a first line naming the columns, e.g. prompt,completion" in error
    one_row = tmp_path / "one_row.csv"
    one_row.write_text("What is 2+2?,4\n")
    assert "line 1 was read as the header" in _error(one_row)
    good_header = tmp_path / "named.csv"
    good_header.write_text("prompt,completion\n2+2=,\n")
    assert "read as the header" not in _error(good_header)  # it names a format's columns: not suspect


def test_skip_bad_rows_counts(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        'not json\n{"text": "a"}\n{"prompt": "p", "completion": "c"}\n{"text": 3}\n{"text": "b"}\n'
    )
    result = read_examples(path, skip_bad_rows=True)
    assert result.format == "text"
    assert [e.text for e in result.examples] == ["a", "b"]
    assert result.skipped == 3


def test_empty_and_all_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert _error(empty) == f"{empty}: no usable rows (0 skipped)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{\n[]\n")
    assert _error(bad, skip_bad_rows=True) == f"{bad}: no usable rows (2 skipped)"
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,completion\n")
    assert "no usable rows" in _error(header_only)


def test_csv_bad_rows_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('prompt,completion\n"multi\nline",ok\nx,\ny,fine,extra\n', encoding="utf-8")
    assert _error(path).startswith(f"{path}:4: 'completion' is empty")
    result = read_examples(path, skip_bad_rows=True)
    assert result.skipped == 2 and len(result.examples) == 1
    path.write_text('prompt,completion\n"a",b\nc,d,e\n')
    assert _error(path).startswith(f"{path}:3: 3 fields, but the header has 2")


def test_parquet_bad_row_names_its_index(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}]
    path = write_table(tmp_path / "rows.parquet", rows, "parquet")
    assert _error(path).startswith(f"{path}:row 1: 'completion' is empty")


def test_missing_file_unknown_extension_and_bad_format(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file or directory"
    odd = tmp_path / "rows.txt"
    odd.write_text("hello")
    message = _error(odd)
    assert "unsupported file type .txt" in message and ".parquet" in message
    assert "not one of auto" in _error(odd, format="sharegpt")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert "not a readable Parquet file" in _error(broken)
    (tmp_path / "plain_dir").mkdir()
    assert "not a datasets directory" in _error(tmp_path / "plain_dir")
