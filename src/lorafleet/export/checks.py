"""The numbers an export must show before it ships: agreement with the merged PyTorch model, and speed.

Each variant is run in its real runtime on the adapter's own prompts followed by PyTorch's greedy
answers to them (teacher forcing: both models see the same prefix at every position), and compared:

    max |Δlogit|      max over positions t and vocabulary v of |z_export[t, v] − z_torch[t, v]|
    top-1 agreement   share of answer positions where the export's arg-max next token is PyTorch's
    mean KL           mean over answer positions of KL(p_torch ‖ p_export), in nats, of the next-token
                      distributions (softmax of the logits): what llama.cpp's perplexity tool reports
                      as KLD; unlike top-1 it sees the whole distribution at every position, so it ranks
                      two quantizations that pick the same tokens (`profiles.choose`)

`BOUNDS` says which figure each variant must meet: quantized variants an agreement share (their logits
move by design; what matters is whether they pick the same tokens), the others a logit bound as well.
ONNX fp32 computes what PyTorch does (1e-3). An f16 GGUF is compared with PyTorch holding the same
f16-rounded weights, and llama.cpp still differs by more than rounding the weights explains: on
SmolLM2-135M with the demo adapter, max |Δlogit| 0.08 with an f32 KV cache (llama.cpp's f16 matrix
products round the activations to f16 as well), where a tensor in the wrong place or order moves the
logits by 1 or more. So f16 and lora are held to 0.25 and 99% top-1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorafleet.errors import ExportError
from lorafleet.export.runtime import EdgeRuntime, torch_logits


@dataclass(frozen=True)
class Bound:
    """What a variant must show against the merged PyTorch model before it is kept."""

    max_abs_logit_diff: float | None = None  # on every checked position
    min_top1_agreement: float | None = None  # on the answer positions


BOUNDS = {
    "f16": Bound(max_abs_logit_diff=0.25, min_top1_agreement=0.99),
    "lora": Bound(max_abs_logit_diff=0.25, min_top1_agreement=0.99),  # llama.cpp applies it to the f16 base
    "q8_0": Bound(min_top1_agreement=0.99),
    "q4_0": Bound(min_top1_agreement=0.95),
    "q4_mix": Bound(min_top1_agreement=0.95),
    "fp32": Bound(max_abs_logit_diff=1e-3),
    "int8": Bound(min_top1_agreement=0.95),
}


@dataclass(frozen=True)
class Reference:
    """A prompt and PyTorch's greedy answer to it, with PyTorch's logits after every position."""

    ids: list[int]  # prompt + answer
    start: int  # where the answer begins
    logits: np.ndarray  # (len(ids), vocab) float32


@dataclass(frozen=True)
class Agreement:
    """How an export's logits compare with PyTorch's over a set of references."""

    max_abs_logit_diff: float
    top1_agreement: float
    answer_tokens: int
    mean_kl: float = 0.0  # nats, over the answer positions


def check_prompts(
    training: dict[str, Any] | None,
    tokenizer: PreTrainedTokenizerBase,
    rows: int = 8,
    say: Callable[[str], None] = lambda _: None,
) -> list[list[int]]:
    """Token ids of prompts to check an export on: the adapter's own training rows where its card names a
    readable file (with the recipe's system prompt, through the chat template), else the general probe's,
    which `say` announces (the card keeps the path as the recipe gave it, often relative to where training
    ran; on the probe's prose, quantized variants agree less with PyTorch than on the adapter's task)."""
    from lorafleet.data.formats import Message, read_examples, with_system_prompt
    from lorafleet.data.tokenize import render_chat
    from lorafleet.errors import DataError
    from lorafleet.evaluation.probe import general_prompts

    data = (training or {}).get("data") or {}
    texts: list[str] = []
    if data.get("path") and Path(data["path"]).is_file():
        try:
            examples = read_examples(data["path"], max_rows=rows).examples
        except DataError:  # changed since training: fall back to the probe
            examples = []
        for example in examples:
            if example.is_chat:
                prompt = with_system_prompt(example, data.get("system_prompt")).prompt_messages
                texts.append(render_chat(prompt, tokenizer, generation=True))
    if not texts:
        if data.get("path"):
            say(
                f"the adapter's training file {data['path']} has no chat rows readable from here: checking "
                "on the general probe prompts (run from where it was trained to check on its own rows)"
            )
        texts = [
            render_chat([Message("user", p)], tokenizer, generation=True) for p in general_prompts()[:rows]
        ]
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


@torch.inference_mode()
def reference_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], tokens: int
) -> list[Reference]:
    """PyTorch's greedy answers to `prompts`, taken in turn until they hold `tokens` answer tokens."""
    references: list[Reference] = []
    left = tokens
    for prompt in prompts:
        if left <= 0:
            break
        output = model.generate(  # type: ignore[operator]
            torch.tensor([prompt]), max_new_tokens=left, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        ids = output[0].tolist()
        references.append(Reference(ids, len(prompt), torch_logits(model, ids)))
        left -= len(ids) - len(prompt)
    return references


def agreement(runtime: EdgeRuntime, references: Sequence[Reference]) -> Agreement:
    """The export's figures over `references` (see the module docstring)."""
    worst, agreeing, answered, divergence = 0.0, 0, 0, 0.0
    for reference in references:
        ours = runtime.logits(reference.ids)
        worst = max(worst, float(np.abs(ours - reference.logits).max()))
        # the logits at position t predict token t + 1: the answer's tokens are predicted from start − 1
        predicted = slice(reference.start - 1, len(reference.ids) - 1)
        agreeing += int((ours[predicted].argmax(-1) == reference.logits[predicted].argmax(-1)).sum())
        divergence += float(kl_divergence(reference.logits[predicted], ours[predicted]).sum())
        answered += len(reference.ids) - reference.start
    if not answered:
        return Agreement(worst, 1.0, 0)
    return Agreement(worst, agreeing / answered, answered, divergence / answered)


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) ‖ softmax(other)) in nats for each row of two (positions, vocab) logit arrays."""
    p_log = torch.from_numpy(reference).double().log_softmax(-1)
    q_log = torch.from_numpy(other).double().log_softmax(-1)
    return torch.nn.functional.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1).numpy()


def enforce(variant: str, figures: Agreement) -> None:
    """`ExportError` naming the figure when `figures` miss the variant's bound."""
    bound = BOUNDS[variant]
    if bound.max_abs_logit_diff is not None and figures.max_abs_logit_diff > bound.max_abs_logit_diff:
        raise ExportError(
            f"{variant}: max |Δlogit| {figures.max_abs_logit_diff:.2e} against the merged PyTorch model "
            f"exceeds {bound.max_abs_logit_diff:g}; the export is wrong, not shipped"
        )
    if bound.min_top1_agreement is not None and figures.top1_agreement < bound.min_top1_agreement:
        raise ExportError(
            f"{variant}: top-1 agreement {figures.top1_agreement:.1%} with the merged PyTorch model over "
            f"{figures.answer_tokens} tokens is under {bound.min_top1_agreement:.0%}; use a less quantized "
            "variant"
        )
