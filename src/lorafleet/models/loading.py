"""`load_base(spec)`: a causal LM and its tokenizer from a HF directory, hub id, GGUF file or `default`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from lorafleet.errors import ModelLoadError
from lorafleet.models.bundled import MARKER_FILE, pull_model
from lorafleet.models.devices import choose_device, choose_dtype

PAD_TOKEN = "<|pad|>"


def load_base(
    spec: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model and tokenizer, in eval mode, on `device` (default: best present) in `dtype`.

    `spec` is `default` (the bundled SmolLM2-135M-Instruct), a directory with `config.json`, a `.gguf`
    file (converted once under `$LORAFLEET_HOME/models/`), or a hub id such as `org/name` (needs network).
    The tokenizer's pad token is never the EOS token, so masking padding never masks the EOS a model
    must learn to emit.
    """
    target = choose_device(device)
    torch_dtype = choose_dtype(target, dtype)
    source = _resolve(str(spec))
    tokenizer = _tokenizer(source, spec=str(spec))
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # loading safetensors takes about a second: no bar
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a causal LM from {spec!s}: {_first_line(err)}") from err
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    ensure_pad_token(model, tokenizer)
    marker = Path(source) / MARKER_FILE
    if marker.is_file():  # a converted GGUF: report the id of the model it came from
        model.config.name_or_path = model.name_or_path = json.loads(marker.read_text())["id"]
    return model.to(target).eval(), tokenizer  # type: ignore[arg-type]


def source_gguf(spec: str | os.PathLike[str] = "default") -> Path | None:
    """The GGUF file base model `spec` was converted from (its marker says so), if it is still there."""
    marker = Path(_resolve(str(spec))) / MARKER_FILE
    if not marker.is_file():
        return None
    source = json.loads(marker.read_text()).get("source")
    return Path(source) if source and Path(source).is_file() else None


def load_tokenizer(spec: str | os.PathLike[str] = "default") -> PreTrainedTokenizerBase:
    """The tokenizer of base model `spec` alone (same specs as `load_base`; no weights are loaded)."""
    return _tokenizer(_resolve(str(spec)), spec=str(spec))


def load_skeleton(spec: str | os.PathLike[str] = "default") -> PreTrainedModel:
    """Base model `spec`'s module tree without weights (on the meta device), to check module names cheaply."""
    source = _resolve(str(spec))
    try:
        config = AutoConfig.from_pretrained(source)
        with torch.device("meta"):
            model: PreTrainedModel = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the model config of {spec!s}: {_first_line(err)}") from err
    return model


def eos_token_ids(model: PreTrainedModel | torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a completion: the tokenizer's EOS and those of the model's generation config."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    return ids


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give `tokenizer` a pad token distinct from EOS, and tell the model's configs about it.

    Reuses the unknown token when it is distinct from EOS (SmolLM2's `<|endoftext|>`); otherwise adds
    `<|pad|>` and grows the embedding matrix by one row.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
                model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _resolve(spec: str) -> str:
    """A local directory transformers can load for `spec` (hub ids are passed through)."""
    if not spec.strip():
        raise ModelLoadError(
            "the model spec is empty; give 'default', a HF model directory, a .gguf file or a hub id"
        )
    path = Path(spec).expanduser()
    if spec == "default" or path.is_file():
        return str(pull_model(spec))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a HF model directory (no config.json)")
        return str(path)
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelLoadError(f"{spec}: no such file or directory (and not a hub id like org/name)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(
            f"{spec}: not a local path, and HF_HUB_OFFLINE=1 forbids fetching it from the hub"
        )
    return spec


def _tokenizer(source: str, *, spec: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {spec}: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    """The error's message on one line (transformers' messages span several), at most 300 characters."""
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


__all__ = ["ensure_pad_token", "eos_token_ids", "load_base", "load_skeleton", "load_tokenizer"]
