"""Running an export in its real runtime, and how closely it agrees with the PyTorch model.

Every format's runtime (llama-cpp-python for GGUF, ONNX Runtime for ONNX) is wrapped as an
`EdgeRuntime`: next-token logits for a sequence of token ids, and greedy decoding. The figures
the tests, the bench and `--target` report are computed here once for all formats:

    max |Δlogit|      max over positions t and vocabulary v of |z_export[t, v] − z_torch[t, v]|
    top-1 agreement   share of generated positions where the export's greedy token equals the
                      PyTorch model's greedy token, both fed the same (PyTorch) prefix
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedModel


class EdgeRuntime(Protocol):
    """An exported model loaded in its runtime."""

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after each position of `ids`: float32, shape (len(ids), vocab)."""
        ...

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """`new_tokens` tokens decoded greedily after `ids` (the runtime's own KV cache)."""
        ...

    def close(self) -> None:
        """Free the runtime's memory."""
        ...


@torch.inference_mode()
def torch_logits(model: PreTrainedModel, ids: Sequence[int]) -> np.ndarray:
    """The PyTorch model's logits after each position of `ids`, float32, shape (len(ids), vocab)."""
    output = model(torch.tensor([list(ids)]))
    return output.logits[0].float().numpy()


def max_abs_logit_diff(runtime: EdgeRuntime, model: PreTrainedModel, ids: Sequence[int]) -> float:
    """max |Δlogit| between the export and the PyTorch model over every position of `ids`."""
    return float(np.abs(runtime.logits(ids) - torch_logits(model, ids)).max())


def top1_agreement(
    runtime: EdgeRuntime, model: PreTrainedModel, ids: Sequence[int], *, start: int = 0
) -> float:
    """Share of positions `start`.. of `ids` where the export's arg-max next token equals PyTorch's.

    Pass a prompt followed by the PyTorch model's own greedy continuation, and `start` = the prompt's
    length, to score the generated tokens only.
    """
    ours, theirs = runtime.logits(ids).argmax(-1), torch_logits(model, ids).argmax(-1)
    return float((ours[start:] == theirs[start:]).mean())


def tokens_per_second(runtime: EdgeRuntime, prompt: Sequence[int], new_tokens: int) -> float:
    """Greedy decoding speed on this machine: `new_tokens` / seconds (prompt processing included)."""
    started = time.perf_counter()
    runtime.greedy(prompt, new_tokens)
    return new_tokens / (time.perf_counter() - started)
