"""An ONNX export (fp32 or int8) run in ONNX Runtime on the CPU, behind the `EdgeRuntime` interface.

The graph `onnx_model.write_onnx` writes takes the past keys and values and returns them updated, so
decoding is: the prompt once with an empty past (P = 0), then one token at a time, each step feeding
the previous step's `present.*` outputs back as `past_key_values.*`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lorafleet.errors import ExportError
from lorafleet.export.onnx_deps import require
from lorafleet.export.onnx_model import PAST_PREFIX, PRESENT_PREFIX


class OnnxRuntime:
    """An exported model in an `onnxruntime.InferenceSession` on the CPU execution provider."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        """Load `path`; `threads` caps ONNX Runtime's intra-op threads (None: one per physical core)."""
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"no ONNX model at {self.path}; export one with write_onnx")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session: Any = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / … classes
            raise ExportError(f"ONNX Runtime cannot load {self.path}: {err}") from err
        inputs = {node.name: node for node in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask", "position_ids"} - inputs.keys()
        if missing:
            raise ExportError(
                f"{self.path} is not a KV-cache export of write_onnx: no input {', '.join(sorted(missing))}"
            )
        self._past = [name for name in inputs if name.startswith(PAST_PREFIX)]
        self._present = [PRESENT_PREFIX + name.removeprefix(PAST_PREFIX) for name in self._past]
        # The past's fixed axes (H_kv, d) from the graph: (B, H_kv, P, d) with B and P dynamic.
        shapes = {tuple(inputs[name].shape[i] for i in (1, 3)) for name in self._past}
        if len(shapes) != 1 or not all(isinstance(size, int) for size in next(iter(shapes))):
            raise ExportError(
                f"{self.path}: past_key_values inputs have no fixed (heads, head_dim): {shapes}"
            )
        self._kv_heads, self._head_dim = next(iter(shapes))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after each position of `ids` (one pass, empty past): float32, (len(ids), V)."""
        logits, _ = self._run(ids, past=None)
        return logits[0]  # (T, V)

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """`new_tokens` arg-max tokens after `ids`: the prompt once, then one token per step on the cache."""
        tokens: list[int] = []
        if new_tokens <= 0:
            return tokens
        logits, past = self._run(ids, past=None)
        tokens.append(int(logits[0, -1].argmax()))
        while len(tokens) < new_tokens:
            logits, past = self._run(tokens[-1:], past=past)
            tokens.append(int(logits[0, -1].argmax()))
        return tokens

    def close(self) -> None:
        """Drop the session (its weights and buffers)."""
        self._session = None

    def _run(self, ids: Sequence[int], past: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One pass over the new tokens `ids` after `past` (None: no past): logits (1, T, V) and present."""
        if self._session is None:
            raise ExportError(f"the ONNX Runtime session of {self.path} is closed")
        if not ids:
            raise ExportError("no token ids to run: pass at least one")
        if past is None:
            past = [np.zeros((1, self._kv_heads, 0, self._head_dim), np.float32) for _ in self._past]
        seen = past[0].shape[2] if past else 0  # P
        new = len(ids)  # T
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),  # (1, T)
            "attention_mask": np.ones((1, seen + new), dtype=np.int64),  # (1, P + T)
            "position_ids": np.arange(seen, seen + new, dtype=np.int64)[None],  # (1, T)
            **dict(zip(self._past, past, strict=True)),
        }
        logits, *present = self._session.run(["logits", *self._present], feed)
        return logits, present
