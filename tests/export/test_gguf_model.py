"""The merged model's GGUF file read back with gguf's reader (and transformers' loader): tensors, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, Keys
from gguf.quants import dequantize, quantize
from transformers import AutoModelForCausalLM

from lorafleet.errors import ExportError
from lorafleet.export import gguf_file
from lorafleet.export.gguf_layout import from_llama_cpp_rope_order, gguf_tensor_name, rope_heads
from lorafleet.export.gguf_model import write_gguf_model
from lorafleet.models import tiny_model
from tests.export.conftest import EdgeModel, EdgeModelFactory


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_every_f16_tensor_round_trips(edge_llama: EdgeModel, tmp_path: Path) -> None:
    model, tokenizer = edge_llama
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16")
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    expected = {gguf_tensor_name(name): weight for name, weight in model.named_parameters()}
    assert set(tensors) == set(expected)
    for name, weight in expected.items():
        stored = tensors[name]
        assert tuple(int(n) for n in reversed(stored.shape)) == tuple(weight.shape), name  # GGUF lists ne
        assert stored.tensor_type == (
            GGMLQuantizationType.F32 if weight.ndim == 1 else GGMLQuantizationType.F16
        )
        values = torch.from_numpy(np.array(stored.data, dtype=np.float32)).reshape(weight.shape)
        heads = rope_heads(name, model.config)
        if heads is not None:
            values = from_llama_cpp_rope_order(values, heads)
        torch.testing.assert_close(values, weight.detach(), rtol=0, atol=0, msg=name)  # fp16-exact weights


def test_transformers_gguf_loader_reads_back_the_same_model(edge_llama: EdgeModel, tmp_path: Path) -> None:
    model, tokenizer = edge_llama
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    theirs = dict(loaded.named_parameters())
    for name, weight in model.named_parameters():
        torch.testing.assert_close(theirs[name], weight, rtol=0, atol=0, msg=name)


def test_hyperparameters_and_tokenizer_metadata(edge_llama: EdgeModel, tmp_path: Path) -> None:
    model, tokenizer = edge_llama
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="q8_0", name="tiny")
    reader = GGUFReader(path)
    config = model.config
    expected = {
        "general.architecture": "llama",
        "general.type": "model",
        "general.name": "tiny",
        "general.file_type": 7,  # MOSTLY_Q8_0
        "llama.context_length": config.max_position_embeddings,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 1,
        "llama.rope.dimension_count": 32,
        "llama.vocab_size": len(tokenizer),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tokenizer.chat_template,
    }
    for key, value in expected.items():
        assert _field(reader, key) == value, key
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(config.rope_parameters["rope_theta"])
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)
    tokens = _field(reader, Keys.Tokenizer.LIST)
    assert tokens[:256] == sorted(tokens[:256]) and tokens[tokenizer.eos_token_id] == "<|im_end|>"  # type: ignore[index]
    types = _field(reader, Keys.Tokenizer.TOKEN_TYPE)
    assert types[tokenizer.eos_token_id] == 3 and types[0] == 1  # type: ignore[index]  # control, normal
    assert reader.fields[Keys.Tokenizer.MERGES].data == []  # present, and empty: every byte is a token


def test_tied_output_head_is_the_embedding_and_q4_0_keeps_it_at_q8_0(
    make_edge_model: EdgeModelFactory, tmp_path: Path
) -> None:
    model, tokenizer = make_edge_model("llama", tied=True)
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="q4_0")
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    assert "output.weight" not in types
    assert types["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32


def test_q4_mix_writes_a_q4_1_base_back_exactly_and_keeps_the_adapted_matrices_apart(
    edge_llama: EdgeModel, tmp_path: Path
) -> None:
    """A base distributed as Q4_1 (here: every matrix snapped to Q4_1's grid) comes back bit for bit where
    the adapter left it alone; the matrices it changed come back in Q5_0 with their update kept on average
    (the stored change from the base, projected on the update, ≈ 1), where Q4_1 would round it away (≈ 0)."""
    model, tokenizer = edge_llama
    adapted = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    updates = {}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2:
                weight.copy_(torch.from_numpy(_round_trip(weight.numpy(), GGMLQuantizationType.Q4_1)))
            if name in adapted:  # an update well under Q4_1's step: rounding onto its grid would erase it
                updates[name] = 0.005 * weight.abs().max() * torch.randn(weight.shape, generator=generator)
                weight.add_(updates[name])
    path = write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="q4_mix", adapted=adapted)
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    for name, weight in model.named_parameters():
        gguf_name = str(gguf_tensor_name(name))
        stored = tensors[gguf_name]
        values = torch.from_numpy(np.array(dequantize(stored.data, stored.tensor_type))).reshape(weight.shape)
        heads = rope_heads(gguf_name, model.config)
        values = from_llama_cpp_rope_order(values, heads) if heads is not None else values
        if name == "lm_head.weight":
            assert stored.tensor_type == GGMLQuantizationType.Q8_0
        elif name in adapted:
            assert stored.tensor_type == GGMLQuantizationType.Q5_0, name
            base = weight.detach() - updates[name]
            assert 0.8 < _kept(values - base, updates[name]) < 1.2, name
            in_q4_1 = torch.from_numpy(_round_trip(weight.detach().numpy(), GGMLQuantizationType.Q4_1))
            assert _kept(in_q4_1 - base, updates[name]) < 0.2, name  # what q4_mix avoids
        elif weight.ndim == 2:
            assert stored.tensor_type == GGMLQuantizationType.Q4_1, name
            torch.testing.assert_close(values, weight.detach(), rtol=0, atol=0, msg=name)


def _round_trip(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return dequantize(quantize(values, qtype), qtype)


def _kept(change: torch.Tensor, update: torch.Tensor) -> float:
    """The share of `update` that `change` holds: its projection on the update, ⟨change, u⟩ / ⟨u, u⟩."""
    return float((change * update).sum() / (update * update).sum())


def test_tokenizer_keys_are_copied_from_a_source_gguf(edge_llama: EdgeModel, tmp_path: Path) -> None:
    model, tokenizer = edge_llama
    source = write_gguf_model(model, tokenizer, tmp_path / "source.gguf", quant="f16")
    tokenizer.chat_template = "changed"  # the copy must come from the source, not from here
    copy = write_gguf_model(model, tokenizer, tmp_path / "copy.gguf", quant="f16", source_gguf=source)
    theirs, ours = GGUFReader(source).fields, GGUFReader(copy).fields
    keys = {key for key in theirs if key.startswith("tokenizer.")}
    assert keys == {key for key in ours if key.startswith("tokenizer.")}
    for key in keys:
        assert ours[key].contents() == theirs[key].contents(), key


def test_a_source_gguf_with_another_vocabulary_is_refused(edge_llama: EdgeModel, tmp_path: Path) -> None:
    model, tokenizer = edge_llama
    other, other_tokenizer = tiny_model("qwen2")
    other.resize_token_embeddings(300)
    source = write_gguf_model(other, other_tokenizer, tmp_path / "source.gguf", quant="f16")
    with pytest.raises(ExportError, match="300 tokens but the model has 260"):
        write_gguf_model(model, tokenizer, tmp_path / "m.gguf", quant="f16", source_gguf=source)
    assert not (tmp_path / "m.gguf").exists()


def test_an_interrupted_write_leaves_no_file_and_keeps_the_old_one(
    edge_llama: EdgeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = edge_llama
    target = tmp_path / "m.gguf"
    encoded = []

    def failing_encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
        if len(encoded) == 5:
            raise KeyboardInterrupt  # midway through the tensor data
        encoded.append(values)
        return real_encode(values, qtype)

    real_encode = gguf_file.encode
    monkeypatch.setattr(gguf_file, "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_gguf_model(model, tokenizer, target, quant="q8_0")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file

    target.write_bytes(b"previous export")
    encoded.clear()
    with pytest.raises(KeyboardInterrupt):
        write_gguf_model(model, tokenizer, target, quant="q8_0")
    assert target.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [target]


def test_a_model_with_lora_layers_is_refused(tmp_path: Path) -> None:
    from lorafleet.adapters import LoraSettings, attach

    base, tokenizer = tiny_model("llama")
    peft_model = attach(base, LoraSettings(r=2, target_modules=["q_proj"]))
    with pytest.raises(ExportError, match="merge the adapter"):
        write_gguf_model(peft_model.get_base_model(), tokenizer, tmp_path / "m.gguf", quant="f16")


def test_unsupported_architectures_and_quants_are_refused(tmp_path: Path) -> None:
    gpt2, tokenizer = tiny_model("gpt2")
    with pytest.raises(ExportError, match="'gpt2'"):
        write_gguf_model(gpt2, tokenizer, tmp_path / "m.gguf", quant="f16")
    llama, tokenizer = tiny_model("llama")
    with pytest.raises(ExportError, match="q2_k"):
        write_gguf_model(llama, tokenizer, tmp_path / "m.gguf", quant="q2_k")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
