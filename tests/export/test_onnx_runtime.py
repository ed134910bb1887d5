"""OnnxRuntime: an ONNX export's logits and greedy tokens, with its KV cache, equal transformers'."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from lorafleet.errors import ExportError
from lorafleet.export.onnx_model import write_onnx
from lorafleet.export.onnx_runtime import OnnxRuntime
from lorafleet.export.runtime import max_abs_logit_diff, torch_logits
from lorafleet.models import tiny_model

pytest.importorskip("onnxruntime")
TEXT = "Hi, my parcel ZX-20931 never came. I paid 41.50 on 3 March 2024."


@pytest.fixture(scope="module")
def runtime(llama: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> OnnxRuntime:
    """`llama` exported once and loaded in ONNX Runtime on one thread."""
    path = write_onnx(llama, tmp_path_factory.mktemp("onnx") / "llama.onnx")
    return OnnxRuntime(path, threads=1)


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    _, tokenizer = tiny_model("llama")
    return tokenizer(TEXT)["input_ids"]


def test_logits_match_transformers(runtime: OnnxRuntime, llama: PreTrainedModel, prompt: list[int]) -> None:
    logits = runtime.logits(prompt)

    assert logits.shape == (len(prompt), llama.config.vocab_size) and logits.dtype == np.float32
    assert max_abs_logit_diff(runtime, llama, prompt) <= 1e-3


def test_greedy_with_the_cache_equals_transformers_and_the_uncached_sequence(
    runtime: OnnxRuntime, llama: PreTrainedModel, prompt: list[int]
) -> None:
    new_tokens = 24

    tokens = runtime.greedy(prompt, new_tokens)

    with torch.no_grad():
        generated = llama.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
    assert tokens == generated[0, len(prompt) :].tolist()
    # The same tokens from full sequences without a cache: each one is the arg-max after its prefix.
    full = prompt + tokens
    uncached = runtime.logits(full).argmax(-1)  # (T,)
    assert tokens == uncached[len(prompt) - 1 : -1].tolist()
    assert len(set(tokens)) > 1  # not a degenerate repetition that any bug could reproduce


def test_greedy_of_zero_tokens_is_empty(runtime: OnnxRuntime, prompt: list[int]) -> None:
    assert runtime.greedy(prompt, 0) == []


def test_single_token_prompt(runtime: OnnxRuntime, llama: PreTrainedModel) -> None:
    np.testing.assert_allclose(runtime.logits([42]), torch_logits(llama, [42]), atol=1e-4, rtol=0)


def test_empty_ids_and_a_closed_session_are_errors(runtime: OnnxRuntime) -> None:
    closed = OnnxRuntime(runtime.path, threads=1)
    with pytest.raises(ExportError, match="at least one"):
        closed.logits([])
    closed.close()

    with pytest.raises(ExportError, match="closed"):
        closed.greedy([1, 2], 3)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no ONNX model at .*nowhere\.onnx"):
        OnnxRuntime(tmp_path / "nowhere.onnx")


def test_a_file_that_is_not_onnx_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")

    with pytest.raises(ExportError, match=r"ONNX Runtime cannot load .*model\.onnx"):
        OnnxRuntime(path)


def test_missing_onnxruntime_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError

    with pytest.raises(ExportError, match=r"onnxruntime.*pip install 'lorafleet\[edge\]'"):
        OnnxRuntime(tmp_path / "model.onnx")
