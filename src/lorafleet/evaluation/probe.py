"""The general-ability probe: how far an adapter moves its base on everyday prompts it was not trained on.

The package ships a fixed list of short general prompts (`general_prompts.json`: facts, arithmetic, a
recipe, a letter, definitions, code). The base model's own greedy answers to them are the reference
text a, computed once per base (keyed by the base's fingerprint, `adapters.identity`) and cached under
`$LORAFLEET_HOME/probe/<fingerprint>.json`. For a model θ,

    PPL(θ) = exp( Σᵢ Σₜ −log p_θ(aᵢₜ | promptᵢ, aᵢ<ₜ)  /  Σᵢ |aᵢ| )

over the answer tokens only, with the prompt chat-templated as in training. The base gives its own
greedy answers a high likelihood, so PPL(base) is low; an adapter that forgot general ability finds
them less likely. General drift is

    drift = PPL(base + adapter) / PPL(base) − 1

0 for an adapter that changes nothing (LoRA B = 0), > 0 for one that moves away from the base. Both
perplexities are measured on the same model object, the base one with the adapter disabled, so device
and dtype cancel out of the ratio.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from lorafleet.adapters.identity import base_identity
from lorafleet.data import Example, Message
from lorafleet.evaluation.suites import answer_loss
from lorafleet.home import lorafleet_home
from lorafleet.training.evaluate import generate_answers

MAX_NEW_TOKENS = 64  # the probe's answers are short; longer ones would cost time and add little
MAX_LENGTH = 512  # prompt and answer together stay well under this


def prompts_file(prompt_set: str) -> Path:
    """The file of a prompt list shipped with the package: `general` (the probe's) or `rehearsal` (general
    rehearsal's, `training.rehearsal`)."""
    return Path(__file__).with_name(f"{prompt_set}_prompts.json")


@cache
def shipped_prompts(prompt_set: str) -> tuple[str, ...]:
    """The prompts of `prompts_file(prompt_set)`."""
    return tuple(json.loads(prompts_file(prompt_set).read_text())["prompts"])


def general_prompts() -> tuple[str, ...]:
    """The probe's prompts as shipped with the package."""
    return shipped_prompts("general")


def probe_cache_file(fingerprint: str, prompt_set: str = "general") -> Path:
    """Where the answers to `prompt_set` of the base with `fingerprint` are kept."""
    return lorafleet_home() / "probe" / f"{fingerprint}-{prompt_set}.json"


def base_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    prompt_set: str = "general",
) -> list[str]:
    """The greedy answers of `model` (a base without an adapter, or with it disabled) to `prompts`.

    Read from the cache of `prompt_set` when it holds answers of this base to these prompts at this
    length; else generated and cached (written to a temporary file, then renamed, so a reader never sees
    half a file).
    A model whose adapter is active or merged is refused (`ValueError`): its answers would be cached as
    the base's.
    """
    if _adapter_in_use(model):
        raise ValueError(
            "base_answers needs the base model: call it inside `model.disable_adapter()`, unmerged"
        )
    identity = base_identity(model)
    path = probe_cache_file(identity.fingerprint, prompt_set)
    key = {"prompts": list(prompts), "max_new_tokens": max_new_tokens}
    cached = _read_cache(path)
    if cached is not None and all(cached.get(name) == value for name, value in key.items()):
        return list(cached["answers"])
    examples = [prompt_example(i, prompt, prompt_set=prompt_set) for i, prompt in enumerate(prompts)]
    answers = generate_answers(
        model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch
    )
    record = {"base": identity.id, "fingerprint": identity.fingerprint, **key, "answers": answers}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, path)
    return answers


def probe_perplexity(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 32
) -> float:
    """Perplexity of `answers` given `prompts` (one user turn each), loss on the answer tokens only."""
    examples = [
        prompt_example(i, prompt, answer)
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True))
    ]
    _, perplexity = answer_loss(model, tokenizer, examples, batch_size=batch_size, max_length=MAX_LENGTH)
    return perplexity


def general_drift(
    model: nn.Module,
    tokenizer: Any,
    *,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """`{"perplexity", "base_perplexity", "drift"}` of `model` (base + adapter) on the probe (see above).

    The base's answers and perplexity come from the same model with its adapter disabled (PEFT's
    `disable_adapter()`); the adapter must not be merged into the base weights. A plain model is its own
    base (drift 0).
    """
    prompts = general_prompts() if prompts is None else prompts
    with _adapter_disabled(model):
        answers = base_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch
        )
        base = probe_perplexity(model, tokenizer, prompts, answers, batch_size=batch_size)
    adapted = probe_perplexity(model, tokenizer, prompts, answers, batch_size=batch_size)
    return {"perplexity": adapted, "base_perplexity": base, "drift": adapted / base - 1.0}


def _adapter_disabled(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def _adapter_in_use(model: nn.Module) -> bool:
    """Whether a LoRA layer of `model` changes its output: an adapter enabled, or merged into the base."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    return any(not layer.disable_adapters or layer.merged for layer in layers)


def prompt_example(
    index: int, prompt: str, answer: str | None = None, *, prompt_set: str = "general"
) -> Example:
    """Prompt `index` of `prompt_set` as one user turn (no system message: the chat template's default),
    followed by `answer` as the assistant's when given."""
    turns = [Message("user", prompt)] + ([Message("assistant", answer)] if answer is not None else [])
    return Example(source=f"{prompts_file(prompt_set).name}:prompt {index + 1}", messages=tuple(turns))


def _read_cache(path: Path) -> dict[str, Any] | None:
    """The cache file's record, or None when it is missing or unreadable (it is then rewritten)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("answers"), list) else None
