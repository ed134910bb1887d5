"""GGUF exports run in llama.cpp (llama-cpp-python) against transformers: logits, tokens, LoRA, greedy."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lorafleet.errors import ExportError
from lorafleet.export.gguf_lora import write_gguf_lora
from lorafleet.export.gguf_model import write_gguf_model
from lorafleet.export.gguf_runtime import GgufRuntime
from lorafleet.export.runtime import max_abs_logit_diff, top1_agreement, torch_logits
from tests.export.conftest import EdgeModel, EdgeModelFactory
from tests.helpers import save_random_adapter

pytest.importorskip("llama_cpp")

TEXT = (
    "The safety bicycle of the 1880s had two wheels of equal size and a chain that drove the rear wheel, "
    "so that gearing rather than wheel size set the speed. "
) * 2  # 260 byte tokens


@pytest.fixture
def runtimes() -> Iterator[list[GgufRuntime]]:
    """Runtimes a test opens, closed after it."""
    opened: list[GgufRuntime] = []
    yield opened
    for runtime in opened:
        runtime.close()


def _open(runtimes: list[GgufRuntime], path: Path, **options: object) -> GgufRuntime:
    runtime = GgufRuntime(path, context=512, **options)  # type: ignore[arg-type]
    runtimes.append(runtime)
    return runtime


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("llama", True), ("qwen2", True)])
def test_f16_logits_match_transformers(
    make_edge_model: EdgeModelFactory, tmp_path: Path, runtimes: list[GgufRuntime], arch: str, tied: bool
) -> None:
    model, tokenizer = make_edge_model(arch, tied=tied)
    ids = tokenizer(TEXT)["input_ids"]
    runtime = _open(runtimes, write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16"))
    assert max_abs_logit_diff(runtime, model, ids) < 1e-2
    assert runtime.logits(ids).shape == (len(ids), len(tokenizer))


def test_f32_export_with_an_f32_cache_is_exact(
    make_edge_model: EdgeModelFactory, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    """Without fp16 rounding anywhere, what is left is float32 summation order: names, row order,
    norms, rope base and epsilon must all be right to stay within 1e-4."""
    model, tokenizer = make_edge_model("llama", tied=True)
    ids = tokenizer(TEXT)["input_ids"]
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f32")
    assert max_abs_logit_diff(_open(runtimes, path, kv_cache="f32"), model, ids) < 1e-4


def test_llama_cpp_tokenizes_as_transformers_does(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    model, tokenizer = edge_llama
    runtime = _open(runtimes, write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16"))
    for text in (TEXT, "naïve café — 3.14 × 2\n\ttabs", "<|im_start|>user\nhi<|im_end|>\n"):
        ours = runtime._llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == tokenizer(text)["input_ids"], text


def test_greedy_decoding_matches_transformers_generate(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    model, tokenizer = edge_llama
    prompt = tokenizer(TEXT[:60])["input_ids"]
    runtime = _open(runtimes, write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16"))
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False
        )
    assert runtime.greedy(prompt, 24) == expected[0, len(prompt) :].tolist()


def test_q8_0_agrees_on_the_next_token(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    model, tokenizer = edge_llama
    runtime = _open(runtimes, write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="q8_0"))
    assert top1_agreement(runtime, model, tokenizer(TEXT)["input_ids"]) >= 0.9


@pytest.mark.parametrize("quant", ["q4_0", "q4_mix"])
def test_4_bit_runs_what_transformers_reads_from_the_same_file(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime], quant: str
) -> None:
    """A random tiny model is too fragile for 4 bits to keep its top-1; the file's own weights are not.
    (q4_mix: the attention as if adapted, in Q5_0; the MLP and embedding in Q4_1.)"""
    model, tokenizer = edge_llama
    adapted = {name for name, _ in model.named_parameters() if "self_attn" in name}
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant=quant, adapted=adapted)  # type: ignore[arg-type]
    dequantized = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    assert top1_agreement(_open(runtimes, path), dequantized, tokenizer(TEXT)["input_ids"]) >= 0.9


@pytest.mark.parametrize(
    "settings",
    [
        {"target_modules": "all-linear"},
        {"target_modules": ["q_proj", "k_proj", "v_proj"], "use_rslora": True, "r": 8},
    ],
    ids=["all-linear", "rslora"],
)
def test_gguf_lora_on_the_f16_base_equals_the_merged_model(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime], settings: dict[str, object]
) -> None:
    model, tokenizer = edge_llama
    ids = tokenizer(TEXT)["input_ids"]
    adapter = save_random_adapter(model, tmp_path / "adapter", **settings)
    merged = PeftModel.from_pretrained(copy.deepcopy(model), adapter).merge_and_unload()
    assert np.abs(torch_logits(merged, ids) - torch_logits(model, ids)).max() > 0.5  # the adapter matters
    base = write_gguf_model(model, tokenizer, tmp_path / "base.gguf", quant="f16")
    lora = write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=model.config)
    with_lora = _open(runtimes, base, lora=lora).logits(ids)
    merged_f16 = _open(runtimes, write_gguf_model(merged, tokenizer, tmp_path / "merged.gguf", quant="f16"))
    assert np.abs(with_lora - merged_f16.logits(ids)).max() < 1e-2
    assert np.abs(with_lora - torch_logits(merged, ids)).max() < 1e-2


def test_alpha_pattern_scales_as_peft_does(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    model, tokenizer = edge_llama
    ids = tokenizer(TEXT)["input_ids"]
    adapter = save_random_adapter(model, tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["alpha_pattern"] = {"v_proj": 2.0}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    merged = PeftModel.from_pretrained(copy.deepcopy(model), adapter).merge_and_unload()
    base = write_gguf_model(model, tokenizer, tmp_path / "base.gguf", quant="f16")
    lora = write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=model.config)
    assert max_abs_logit_diff(_open(runtimes, base, lora=lora), merged, ids) < 1e-2


def test_missing_llama_cpp_asks_for_the_edge_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    with pytest.raises(ExportError, match=r"pip install 'lorafleet\[edge\]'"):
        GgufRuntime(tmp_path / "m.gguf")


def test_missing_or_broken_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such GGUF file"):
        GgufRuntime(tmp_path / "absent.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    with pytest.raises(ExportError, match=r"broken\.gguf"):
        GgufRuntime(broken)


def test_context_overflow_is_refused(
    edge_llama: EdgeModel, tmp_path: Path, runtimes: list[GgufRuntime]
) -> None:
    model, tokenizer = edge_llama
    runtime = _open(runtimes, write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16"))
    with pytest.raises(ExportError, match="context of 512"):
        runtime.greedy([1] * 500, 20)
