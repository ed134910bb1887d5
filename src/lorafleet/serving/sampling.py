"""Per-request next-token choice and text: repetition penalty, temperature, top-k, top-p, seeded sampling,
stop strings, and incremental detokenization for streaming.

For one request's logits z (V,) the steps run in transformers' order:

    repetition penalty p:  z_i ← z_i / p if z_i > 0 else z_i · p, for every token i already seen
                           (prompt and completion, as `RepetitionPenaltyLogitsProcessor`), clamped to
                           float32's finite range, so no p > 0 makes a logit ±inf
    temperature T = 0:     argmax z (greedy)
    temperature T > 0:     z ← (z − max z) / T, the likeliest token at 0 and the others below it, so
                           softmax(z) is finite for every T: a tiny T (even one float32 rounds to 0)
                           sends the others to −inf, which is greedy; keep the k largest (top-k); keep
                           the smallest set of likeliest tokens whose probability reaches top_p (top-p);
                           sample from softmax(z) with the request's own `torch.Generator` (seeded:
                           reproducible whatever else shares the batch)

A request's failure stays in its own row: `choose_tokens` checks the batch's logits once per step, and a
row whose logits hold nan or +inf (a broken adapter), or whose probabilities are not finite, or whose
chooser raises gets a `SamplingError` in place of its token, while the other rows get theirs.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedTokenizerBase

from lorafleet.errors import LorafleetError
from lorafleet.serving.generate import SamplingSettings


class SamplingError(LorafleetError):
    """One request's next token cannot be chosen; the message says why (its settings or its logits)."""


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Logits (V,) with each token in `seen` (n,) made less likely by `penalty` > 1 (more likely below 1),
    as transformers does, clamped to the finite range of their dtype."""
    score = logits.gather(0, seen)  # (n,)
    score = torch.where(score < 0, score * penalty, score / penalty)
    finite = torch.finfo(score.dtype)
    return logits.scatter(0, seen, score.clamp(finite.min, finite.max))  # (V,)


def scale_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (V,) less their max, divided by `temperature` > 0: the likeliest token stays at 0 and the
    others go to ≤ 0 (−inf for a tiny temperature), never to +inf or nan."""
    shifted = logits - logits.max()  # (V,), ≤ 0
    return torch.where(shifted == 0, 0.0, shifted / temperature)  # 0 / T is nan when T rounds to 0


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (V,) with all but the k largest set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (V,) keeping the smallest set of likeliest tokens whose probability mass reaches `top_p`."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits)  # ascending
    cumulative = sorted_logits.softmax(-1).cumsum(-1)  # (V,)
    drop = cumulative <= 1 - top_p
    drop[-1] = False  # always keep the likeliest token
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


class TokenChooser:
    """Chooses one request's next tokens from its logits, remembering what it has seen for the penalty.

    Raises `SamplingError` at once for settings that are not finite numbers (the API refuses them; this
    guards requests made in code with `model_construct`).
    """

    def __init__(self, settings: SamplingSettings, prompt_ids: list[int]) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(settings, name)
            if not math.isfinite(value):
                raise SamplingError(f"{name} must be a finite number (got {value!r})")
        self.settings = settings
        self.seen = torch.tensor(prompt_ids, dtype=torch.long)
        self.generator = torch.Generator()
        if settings.seed is not None:
            self.generator.manual_seed(settings.seed)
        else:
            self.generator.seed()

    @property
    def greedy_plain(self) -> bool:
        """Greedy with no penalty: the batch's argmax is this request's choice."""
        return self.settings.temperature == 0 and self.settings.repetition_penalty == 1.0

    def choose(self, logits: torch.Tensor) -> int:
        """The next token for logits (V,); `SamplingError` when its probabilities are not finite."""
        settings = self.settings
        logits = logits.float()
        if settings.repetition_penalty != 1.0 and self.seen.numel():
            logits = apply_repetition_penalty(
                logits, self.seen.to(logits.device), settings.repetition_penalty
            )
        if settings.temperature == 0:
            return int(logits.argmax())
        logits = scale_by_temperature(logits, settings.temperature)
        logits = filter_top_p(filter_top_k(logits, settings.top_k), settings.top_p)
        probs = logits.softmax(-1).cpu()  # (V,)
        if not bool(torch.isfinite(probs).all()):
            raise SamplingError(
                f"the sampling probabilities are not finite (temperature {settings.temperature!r}, "
                f"top_p {settings.top_p!r}, top_k {settings.top_k!r}, "
                f"repetition_penalty {settings.repetition_penalty!r})"
            )
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def remember(self, token: int) -> None:
        if self.settings.repetition_penalty != 1.0:
            self.seen = torch.cat([self.seen, torch.tensor([token])])


def choose_tokens(logits: torch.Tensor, choosers: list[TokenChooser]) -> list[int | SamplingError]:
    """The next token of each row of logits (B, V), or the `SamplingError` saying why that row has none.

    One batched max serves the plain greedy rows (its argmax) and finds the rows whose logits hold nan or
    +inf or are all -inf (its value is not finite); only the other rows run their chooser, each in its
    own try.
    """
    top, best = logits.max(-1)  # (B,), (B,); a row holding nan has a nan max
    finite = torch.isfinite(top)  # (B,): no nan, no +inf, and some token not -inf
    greedy, healthy = torch.stack([best, finite.long()]).tolist()  # (2, B): one transfer for both
    choices: list[int | SamplingError] = []
    for i, chooser in enumerate(choosers):
        if not healthy[i]:
            choices.append(
                SamplingError("the model produced non-finite logits (nan or inf) for this request")
            )
        elif chooser.greedy_plain:
            choices.append(greedy[i])
        else:
            choices.append(_choose_one(chooser, logits[i]))
    for chooser, choice in zip(choosers, choices, strict=True):
        if not isinstance(choice, SamplingError):
            chooser.remember(choice)
    return choices


def _choose_one(chooser: TokenChooser, logits: torch.Tensor) -> int | SamplingError:
    """`chooser.choose(logits)` for one row (V,), or its failure as a `SamplingError`."""
    try:
        return chooser.choose(logits)
    except SamplingError as err:
        return err
    except Exception as err:  # a bug or a torch error for this row's settings: it fails this row only
        return SamplingError(f"choosing the next token failed: {type(err).__name__}: {err}")


class TextStream:
    """A completion's text as it grows token by token: pieces safe to show, and where a stop string ends it.

    Text that could still turn into a stop string (up to its length - 1 characters) and an unfinished
    multi-byte character are held back until the next token decides them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def add(self, token: int) -> str:
        """Append one token; return the new text safe to show (sets `stopped` when a stop string appears)."""
        self.token_ids.append(token)
        previous = len(self.text)
        text: str = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)  # type: ignore[assignment]
        if self.stop:
            start = max(0, previous - self.hold - 1)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text, self.stopped = text[: min(hits)], True
                return self.flush()
        self.text = text
        # hold back what a stop string could still start with, and characters whose bytes are not all here
        safe = min(len(text) - self.hold, len(text.rstrip("\ufffd")))
        if safe <= self.sent:
            return ""
        piece, self.sent = text[self.sent : safe], safe
        return piece

    def flush(self) -> str:
        """Everything not yet handed out (at the end of the completion)."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece
