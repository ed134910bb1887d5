"""Helpers shared by test modules: running the CLI, checking its one-line errors, writing JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from lorafleet.cli.app import app


def invoke(*args: str, input: str | None = None) -> Result:
    """Run `lorafleet ARGS` in-process through Typer's runner."""
    return CliRunner().invoke(app, list(args), prog_name="lorafleet", input=input)


def assert_friendly_error(result: Result, *needles: str) -> str:
    """Exit code 2, `error: ...` in one or two lines on stderr, no traceback; return the message."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert len(message.splitlines()) <= 2, message
    for needle in needles:
        assert needle in message, message
    return message


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` as JSON lines and return `path`."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
