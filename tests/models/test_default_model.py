"""The bundled default model (SmolLM2-135M-Instruct from GGUF): converted once, answers, carries an adapter.

All tests share one $LORAFLEET_HOME for the session, so the ~45 s conversion happens once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorafleet.adapters import LoraSettings, attach, load_adapter, save_adapter
from lorafleet.models import DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME, load_base
from lorafleet.models.bundled import MARKER_FILE
from lorafleet.serving import SamplingSettings, stream_generate

pytestmark = pytest.mark.slow

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One $LORAFLEET_HOME for every test here, set before any session fixture loads a model."""
    home = tmp_path_factory.mktemp("lorafleet-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFLEET_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def lorafleet_home(shared_home: Path) -> Path:
    """Overrides the per-test home of tests/conftest.py with the shared one."""
    return shared_home


@pytest.fixture(scope="session")
def default_base(shared_home: Path) -> Loaded:
    """The first `load_base("default")` of the session, which converts the GGUF."""
    assert not (shared_home / "models").exists()
    return load_base("default", device="cpu")


def test_default_base_converts_the_bundled_gguf(default_base: Loaded, shared_home: Path) -> None:
    model, _ = default_base
    converted = shared_home / "models" / DEFAULT_MODEL_NAME

    assert (converted / "model.safetensors").is_file()
    assert (converted / MARKER_FILE).is_file()
    assert [p.name for p in converted.parent.iterdir()] == [DEFAULT_MODEL_NAME]  # no staging dir left
    assert model.config.name_or_path == DEFAULT_MODEL_ID
    assert model.dtype == torch.float32


def test_second_load_reuses_the_conversion(
    default_base: Loaded, shared_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = shared_home / "models" / DEFAULT_MODEL_NAME / "model.safetensors"
    before = weights.stat()

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr("lorafleet.models.bundled.atomic_directory", no_conversion)
    model, _ = load_base("default", device="cpu")  # how fast this is: bench/lora_overhead.py
    assert model.config.name_or_path == DEFAULT_MODEL_ID
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_pad_token_is_not_eos(default_base: Loaded) -> None:
    model, tokenizer = default_base

    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id < model.get_input_embeddings().num_embeddings


def test_greedy_answer_names_paris(default_base: Loaded) -> None:
    model, tokenizer = default_base

    answer = "".join(
        stream_generate(model, tokenizer, "What is the capital of France?", SamplingSettings(max_tokens=20))
    )

    assert "Paris" in answer, answer


def test_adapter_round_trip_on_the_default_base(shared_home: Path, default_base: Loaded) -> None:
    _, tokenizer = default_base
    trained_on, _ = load_base("default", device="cpu")  # attach mutates its base: not the shared one
    peft_model = attach(trained_on, LoraSettings(r=8, target_modules=["q_proj", "v_proj"], init="random"))
    path = save_adapter(peft_model, shared_home / "adapters" / "round-trip", name="round-trip")
    input_ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]  # (1, T)

    fresh, _ = load_base("default", device="cpu")
    reloaded = load_adapter(fresh, path)

    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits  # (1, T, vocab)
        actual = reloaded(input_ids=input_ids).logits
        base = default_base[0](input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(actual, base, atol=1e-3), "a random adapter changes the logits"
