"""The tokenizer metadata: where a converted model's source GGUF is, and which HF tokenizers can be built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFWriter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lorafleet.errors import ExportError
from lorafleet.export.gguf_tokenizer import add_bpe_tokenizer
from lorafleet.models.bundled import MARKER_FILE
from lorafleet.models.loading import source_gguf
from lorafleet.models.tiny import tiny_tokenizer


def test_the_source_gguf_of_a_converted_model(tmp_path: Path) -> None:
    source = tmp_path / "model.Q4_1.gguf"
    source.write_bytes(b"GGUF")
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    assert source_gguf(str(converted)) is None  # not converted by lorafleet
    (converted / MARKER_FILE).write_text(json.dumps({"source": str(source)}))
    assert source_gguf(str(converted)) == source
    source.unlink()
    assert source_gguf(str(converted)) is None  # the source is gone: build the tokenizer instead


def _bpe(pre_tokenizer: object, merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | {
        "".join(pair): 256 + i for i, pair in enumerate(merges)
    }
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizer  # type: ignore[assignment]
    backend.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _pre(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> str:
    writer = GGUFWriter(tmp_path / "t.gguf", "llama")
    add_bpe_tokenizer(writer, tokenizer, vocab_size=len(tokenizer))
    return str(writer.kv_data[0]["tokenizer.ggml.pre"].value)


def test_known_pre_tokenizers_are_named_as_llama_cpp_names_them(tmp_path: Path) -> None:
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    assert _pre(_bpe(gpt2, [("h", "e")]), tmp_path) == "gpt-2"
    assert _pre(_bpe(smollm, [("h", "e")]), tmp_path) == "smollm"
    assert _pre(tiny_tokenizer(), tmp_path) == "gpt-2"  # no merges: any split gives the same tokens


def test_an_unknown_pre_tokenizer_with_merges_is_refused(tmp_path: Path) -> None:
    whitespace = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    with pytest.raises(ExportError, match="source_gguf"):
        _pre(_bpe(whitespace, [("h", "e")]), tmp_path)


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused(tmp_path: Path) -> None:
    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    with pytest.raises(ExportError, match="WordLevel"):
        _pre(PreTrainedTokenizerFast(tokenizer_object=backend), tmp_path)
