"""A GGUF export run in llama.cpp (through llama-cpp-python), as an `EdgeRuntime`.

llama-cpp-python is an optional dependency (`pip install 'lorafleet[edge]'`), imported only when a
runtime is made. The model is loaded with `logits_all`, so evaluating T ids leaves the logits after
every position (T, vocab); a LoRA GGUF (`gguf_lora`) is applied at its trained scale on top.

On a CPU with AMX, llama.cpp moves quantized weights into its AMX buffer at load time; where the
operating system or a sandbox does not grant the AMX tile registers, the first quantized matrix
product then crashes the process (seen with llama.cpp's own Q4_1 SmolLM2 file). So by default the
extra CPU buffer types (AMX, and the repacked-weight layouts that share the switch) are turned off on
AMX machines: slower on a bare-metal AMX server, never a crash. `repack=True` turns them on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import numpy as np

from lorafleet.errors import ExportError

_PATCH_LOCK = threading.Lock()


class GgufRuntime:
    """A GGUF model (and optionally a GGUF LoRA) loaded in llama.cpp on the CPU."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lora: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        context: int = 1024,
        kv_cache: Literal["f16", "f32"] = "f16",
        repack: bool | None = None,
    ) -> None:
        """Load `path` with `context` positions of KV cache; `threads` defaults to llama-cpp-python's.

        `kv_cache`: the keys' and values' type; llama.cpp's default f16 rounds them (on SmolLM2-135M that
        alone moves logits by up to 0.05), f32 keeps them exact, to check an f32 export to the last bit.
        `repack`: use llama.cpp's extra CPU buffer types (AMX, repacked weights); None: unless the CPU
        has AMX (see the module docstring).
        """
        llama_cpp = _import_llama_cpp()
        for file in (path, lora):
            if file is not None and not Path(file).is_file():
                raise ExportError(f"{file}: no such GGUF file")
        use_extra_buffers = not _cpu_has_amx() if repack is None else repack
        cache_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_cache]
        try:
            with _extra_buffer_types(llama_cpp, enabled=use_extra_buffers):
                self._llm = llama_cpp.Llama(
                    model_path=str(path),
                    lora_path=None if lora is None else str(lora),
                    n_ctx=context,
                    n_batch=context,
                    n_threads=threads,
                    logits_all=True,
                    type_k=cache_type,
                    type_v=cache_type,
                    verbose=False,
                )
        except ValueError as err:  # llama-cpp-python's "Failed to load model from file"
            what = f"{path} with LoRA {lora}" if lora is not None else str(path)
            raise ExportError(f"llama.cpp could not load {what}: {err}") from err
        self.context = context

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after each position of `ids`: float32, shape (len(ids), vocab)."""
        self._start(ids)
        return np.array(self._llm.scores[: len(ids)], dtype=np.float32)  # (T, vocab)

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """`new_tokens` tokens decoded greedily after `ids`, one at a time on llama.cpp's KV cache."""
        if len(ids) + new_tokens > self.context:
            raise ExportError(
                f"{len(ids)} prompt + {new_tokens} new tokens exceed the runtime's context of {self.context}"
            )
        self._start(ids)
        generated: list[int] = []
        for _ in range(new_tokens):
            token = int(np.argmax(self._llm.scores[self._llm.n_tokens - 1]))
            generated.append(token)
            self._llm.eval([token])
        return generated

    def close(self) -> None:
        """Free llama.cpp's model and context."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None

    def _start(self, ids: Sequence[int]) -> None:
        """Evaluate `ids` from an empty KV cache."""
        if not ids:
            raise ExportError("the runtime needs at least one token id to evaluate")
        if len(ids) > self.context:
            raise ExportError(f"{len(ids)} ids exceed the runtime's context of {self.context} positions")
        self._llm.reset()
        self._llm.eval(list(ids))


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as err:
        raise ExportError(
            "running GGUF exports needs llama-cpp-python: pip install 'lorafleet[edge]'"
        ) from err
    return llama_cpp


def _cpu_has_amx() -> bool:
    """Whether the CPU advertises AMX (Linux /proc/cpuinfo flags; False where there is none)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _extra_buffer_types(llama_cpp: Any, *, enabled: bool) -> Iterator[None]:
    """Make `llama_cpp.Llama` load with llama.cpp's extra buffer types on or off.

    `Llama` takes its model parameters from `llama_model_default_params()` and has no argument for
    `use_extra_bufts`, so while it loads, that function returns defaults with the flag set.
    """
    if enabled:
        yield
        return
    bindings = llama_cpp.llama.llama_cpp
    defaults = bindings.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _PATCH_LOCK, mock.patch.object(bindings, "llama_model_default_params", without_extra_buffers):
        yield
