"""Per-request next-token choice and text: repetition penalty, temperature, top-k, top-p, seeded sampling,
stop strings, and incremental detokenization for streaming.

For one request's logits z (V,) the steps run in transformers' order:

    repetition penalty p:  z_i ← z_i / p if z_i > 0 else z_i · p, for every token i already seen
                           (prompt and completion, as `RepetitionPenaltyLogitsProcessor`)
    temperature T = 0:     argmax z (greedy)
    temperature T > 0:     z ← z / T; keep the k largest (top-k); keep the smallest set of likeliest
                           tokens whose probability reaches top_p (top-p); sample from softmax(z)
                           with the request's own `torch.Generator` (seeded: reproducible whatever
                           else shares the batch)
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from lorafleet.serving.generate import SamplingSettings


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Logits (V,) with each token in `seen` (n,) made less likely by `penalty` > 1, as transformers does."""
    score = logits.gather(0, seen)  # (n,)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(0, seen, score)  # (V,)


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
    """Chooses one request's next tokens from its logits, remembering what it has seen for the penalty."""

    def __init__(self, settings: SamplingSettings, prompt_ids: list[int]) -> None:
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
        """The next token for logits (V,)."""
        settings = self.settings
        logits = logits.float()
        if settings.repetition_penalty != 1.0 and self.seen.numel():
            logits = apply_repetition_penalty(
                logits, self.seen.to(logits.device), settings.repetition_penalty
            )
        if settings.temperature == 0:
            return int(logits.argmax())
        logits = filter_top_p(filter_top_k(logits / settings.temperature, settings.top_k), settings.top_p)
        probs = logits.softmax(-1).cpu()  # (V,)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def remember(self, token: int) -> None:
        if self.settings.repetition_penalty != 1.0:
            self.seen = torch.cat([self.seen, torch.tensor([token])])


def choose_tokens(logits: torch.Tensor, choosers: list[TokenChooser]) -> list[int]:
    """The next token of each row of logits (B, V): one batched argmax for the plain greedy rows."""
    greedy = logits.argmax(-1).tolist()  # (B,)
    tokens = [
        greedy[i] if chooser.greedy_plain else chooser.choose(logits[i]) for i, chooser in enumerate(choosers)
    ]
    for chooser, token in zip(choosers, tokens, strict=True):
        chooser.remember(token)
    return tokens


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
