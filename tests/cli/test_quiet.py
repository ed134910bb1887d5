"""The real `lorafleet` process prints only lorafleet's lines: no bitsandbytes, kernels or datasets chatter
(imports happen fresh in a subprocess, which is where that noise came from)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lorafleet
from tests.helpers import write_jsonl

QA_ROWS = [{"prompt": f"q{i % 4}", "completion": f"answer {i % 4}"} for i in range(8)]
QUICK = ("--set", "data.max_length=64", "--set", "lora.r=4", "--set", "lora.target_modules=[q_proj]")
# What the libraries printed before: bitsandbytes' CPU-kernel fetch, the kernels loader, datasets' parquet.
NOISE = ("kernels-community", "gemm_4bit", "publisher trust", "trust_remote_code", "Failed to read schema")


def lorafleet_process(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m lorafleet ARGS` offline, with this checkout's package, and capture its output."""
    source = str(Path(lorafleet.__file__).parents[1])
    env = os.environ | {
        "LORAFLEET_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "lorafleet", *args], env=env, capture_output=True, text=True, timeout=300
    )


def assert_no_noise(output: str) -> None:
    for needle in NOISE:
        assert needle not in output, output


@pytest.mark.integration
def test_plain_lora_training_prints_nothing_from_other_libraries(
    tiny_dir: Path, tmp_path: Path, lorafleet_home: Path
) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)

    done = lorafleet_process(
        "train", "--model", str(tiny_dir), "--data", str(data), "-o", "quiet", "--max-steps", "1",
        "--no-progress", *QUICK, home=lorafleet_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # without progress bars, everything lorafleet says goes to stdout
    assert_no_noise(done.stdout)
    assert done.stdout.startswith("data (prompt_completion): ")


@pytest.mark.integration
def test_a_file_that_is_not_parquet_gives_one_error_line(
    tiny_dir: Path, tmp_path: Path, lorafleet_home: Path
) -> None:
    broken = tmp_path / "rows.parquet"
    broken.write_text('{"prompt": "this is JSON", "completion": "not Parquet"}\n')

    done = lorafleet_process("train", "--model", str(tiny_dir), "--data", str(broken), home=lorafleet_home)

    assert done.returncode == 2, done.stderr
    assert_no_noise(done.stdout + done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith(f"error: {broken}: not a readable Parquet file")
