"""The embedded serving engine: many tenants' requests, each with its own adapter, batched on one base model.

Continuous (iteration-level) batching: the running batch changes between decode steps. One `step`:

1. admit: while the batch has room, take the next request from the fair queue, pin its adapter in a slot
   of the multi-LoRA layers (the device tier; a miss asks the `AdapterCache`, the CPU tier), and prefill
   the joiners together; each joiner's first token comes from its prefill logits. A request whose
   adapter fails to load finishes with an error naming the adapter; the others go on.
2. decode: one forward pass gives every running row its next token, each row through its own adapter.
3. retire: rows that produced EOS, a stop string or max_tokens (or were cancelled, or failed) leave the
   batch and unpin their adapters.

A request fails alone: settings the chooser cannot use fail it at admission, and a row whose logits are
not finite (a broken adapter) or whose next token cannot be chosen ends with an error while the other
rows decode on, each with the tokens it would have had alone. Only a failed forward pass fails the
whole running batch (its KV cache is then unusable).

Rows never see each other (per-row attention mask and positions, per-row LoRA), so a request's greedy
tokens are the same whatever else shares its batch. In merged mode the engine serves one adapter
folded into the base weights (W₀ + s·B·A) with no LoRA work at all. On a CPU in fp32 the large base
linears are packed for oneDNN once (`serving.packed`), for merged and multi-adapter serving alike.
Joiners of one adapter whose prompts begin alike (a system prompt) prefill that prefix once; its keys
and values are kept and start later prefills of prompts that begin with it (`serving.kv.PrefixKV`).

`Engine.for_model` builds an engine and its adapter cache for a base model (serving, `lorafleet
generate`, the benches); `Engine.borrowing` runs a model as it is, its own PEFT adapter included, for a
while and hands it back unchanged (evaluation, which scores answers generated here: one decoder).
Drive it with `step()` / `run_until_idle()` in one thread, or `start()` a background thread and consume
handles from others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from lorafleet.adapters.identity import base_identity
from lorafleet.errors import AdapterError, ConfigError, LorafleetError, QueueFullError
from lorafleet.models import eos_token_ids
from lorafleet.serving.cache import AdapterCache, AdapterSource, linear_shapes
from lorafleet.serving.generate import encode_prompt
from lorafleet.serving.kv import BatchKV, PrefixKV, check_batchable, shared_prefix_length
from lorafleet.serving.multilora import AdapterSlots, LoraBatch, MultiLoraLinear, merge_into, wrap_linears
from lorafleet.serving.packed import pack_linears, packed_for_inference
from lorafleet.serving.queue import FairQueue
from lorafleet.serving.requests import Completion, FinishReason, Request, RequestHandle
from lorafleet.serving.sampling import SamplingError, TextStream, TokenChooser, choose_tokens


@dataclass(eq=False)
class _Row:
    """A request in the running batch."""

    handle: RequestHandle
    slot: int
    chooser: TokenChooser
    text: TextStream
    last: int = -1
    finish: FinishReason | None = None
    error: str | None = None  # why the request failed, when finish is "error"
    tokens: list[int] = field(default_factory=list)


class Engine:
    """Serves requests for many adapters in mixed batches on one base model (see the module docstring).

    The engine takes over `model`: it wraps its linear layers (all but the output head, or `targets`)
    in place, or, with `merged=REF`, adds that adapter into the weights. Build `cache` (its base identity
    and module shapes) from the model before making the engine (`for_model` does both); without a cache
    the model runs as it is and requests name no adapter. `max_batch` rows run at once; the device
    tier holds at most `max_slots` adapters (and `max_slot_bytes` of factors); `queue_size` requests wait.
    `pack_weights` packs the large fp32 linears for oneDNN where the device allows (see `serving.packed`).
    `share_prefixes` prefills a prefix that joiners share once (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        cache: AdapterCache | None,
        max_batch: int = 32,
        max_slots: int = 64,
        max_slot_bytes: int | None = None,
        queue_size: int = 256,
        merged: str | None = None,
        targets: list[str] | None = None,
        pack_weights: bool = True,
        share_prefixes: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1 (got {max_batch})")
        if cache is None and merged is not None:
            raise ConfigError(f"merged={merged!r} needs an adapter cache to read the adapter from")
        if any(isinstance(m, MultiLoraLinear) for m in model.modules()):
            raise ConfigError("this model is already served by another engine; load a fresh copy")
        check_batchable(getattr(model, "config", None))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cache = cache
        self.max_batch = max_batch
        self.merged = merged
        self.queue: FairQueue[RequestHandle] = FairQueue(queue_size)
        self.device = next(model.parameters()).device
        config = getattr(model, "config", None)
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.slots: AdapterSlots | None = None
        self.routing: LoraBatch | None = None
        self.share_prefixes = share_prefixes
        self._prefix: PrefixKV | None = None  # the last shared prefix prefilled, to start later prefills
        if merged is not None:
            assert cache is not None
            merge_into(model, cache.get(merged))
        elif cache is not None:
            layers = wrap_linears(model, targets)
            self.routing = next(iter(layers.values())).batch
            self.slots = AdapterSlots(layers, max_slots=max_slots, max_bytes=max_slot_bytes)
        if pack_weights:
            pack_linears(model, rows=max_batch)
        self._rows: list[_Row] = []
        self._kv: BatchKV | None = None
        self._waiting: deque[RequestHandle] = deque()  # taken from the queue, not yet admitted
        self._step_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        source: AdapterSource | None = None,
        max_adapters: int = 64,
        **options: Any,
    ) -> Engine:
        """An engine serving `model` with adapters from `source` (directories by default) through an
        `AdapterCache` of at most `max_adapters`, built from the model before the engine takes it over.
        `options` are the engine's own (`max_batch`, `max_slots`, `queue_size`, `merged`, ...)."""
        cache = AdapterCache(
            base_identity(model),
            source=source,
            module_shapes=linear_shapes(model),
            max_adapters=max_adapters,
        )
        return cls(model, tokenizer, cache=cache, **options)

    @classmethod
    @contextmanager
    def borrowing(
        cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, max_batch: int, queue_size: int = 256
    ) -> Iterator[Engine]:
        """An engine running `model` as it is (a base, or a PEFT model with its adapter merged or not)
        inside the block; after it, the model has its own linear layers and training mode back."""
        was_training = model.training
        engine = cls(
            model, tokenizer, cache=None, max_batch=max_batch, queue_size=queue_size, pack_weights=False
        )
        try:
            with packed_for_inference(model, rows=max_batch):
                yield engine
        finally:
            model.train(was_training)

    # --- submitting --------------------------------------------------------------------------------------

    def submit(self, request: Request) -> RequestHandle:
        """Queue `request` and return its handle; `QueueFullError` when the queue is full.

        The prompt is tokenized here, so a prompt that cannot be served raises `ConfigError` at once.
        """
        handle = RequestHandle(request, self._encode(request))
        self.queue.put(handle, tenant=request.tenant)
        return handle

    def generate(self, requests: Iterable[Request]) -> list[Completion]:
        """Run `requests` as mixed batches; their completions in order (stepping here unless started)."""
        handles: list[RequestHandle] = []
        for request in requests:
            while True:
                try:
                    handles.append(self.submit(request))
                    break
                except QueueFullError as err:
                    if self.running:
                        time.sleep(min(err.retry_after, 0.05))
                    else:
                        self.step()
        if not self.running:
            while not all(handle.done for handle in handles):
                self.step()
        return [handle.result() for handle in handles]

    def read_adapter(self, ref: str) -> None:
        """Read adapter `ref` into the CPU tier now, so a broken one raises here (in the caller's thread)
        and the engine's loop never waits on a disk read; a merged engine checks `ref` at admission."""
        if self.slots is not None:
            assert self.cache is not None, "an engine with adapter slots has a cache"
            self.cache.get(ref)

    # --- running ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the background thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Serve in a background thread until `stop()`."""
        if self.running:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="lorafleet-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread after its step; running and queued requests stay for a later start."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run_until_idle(self) -> None:
        """Step in this thread until no request is running or waiting."""
        if self.running:
            raise ConfigError(
                "the engine is serving in its background thread; stop() it before stepping here"
            )
        while self.step():
            pass

    def step(self) -> bool:
        """Admit waiting requests, decode one token for every running row, retire finished rows.

        Returns whether requests are still running or waiting.
        """
        with self._step_lock:
            try:
                self._admit()
                self._retire()
                if self._rows:
                    self._decode()
                    self._retire()
            except Exception as err:  # a failed forward (or a bug) fails the running requests, not the engine
                self._fail(self._rows, err)
                self._rows, self._kv = [], None
            return bool(self._rows or self._waiting or len(self.queue))

    def stats(self) -> dict[str, Any]:
        """Running rows, waiting requests, and the device tier's slots."""
        return {
            "running": len(self._rows),
            "waiting": len(self._waiting) + len(self.queue),
            "slots": self.slots.stats() if self.slots is not None else None,
        }

    def _serve(self) -> None:
        while not self._stopping.is_set():
            if not self.step():
                handle = self.queue.get(timeout=0.05)
                if handle is not None:
                    self._waiting.append(handle)

    # --- one step -----------------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Move waiting requests into the batch while there is room, prefilling them together."""
        joiners: list[_Row] = []
        while len(self._rows) + len(joiners) < self.max_batch:
            handle = self._waiting.popleft() if self._waiting else self.queue.get_nowait()
            if handle is None:
                break
            if handle.cancelled:
                self._complete(handle, [], "", "cancelled")
                continue
            settings = handle.request.sampling
            try:
                chooser = TokenChooser(settings, handle.prompt_ids)
                slot = self._pin_adapter(handle.request.adapter)
            except Exception as err:  # bad settings or a bad adapter fail their own request only
                message = str(err) if isinstance(err, LorafleetError) else f"{type(err).__name__}: {err}"
                self._complete(handle, [], "", "error", error=message)
                continue
            if slot is None:  # every slot is pinned by a running request: wait for one to finish
                self._waiting.appendleft(handle)
                break
            text = TextStream(self.tokenizer, list(settings.stop))
            joiners.append(_Row(handle, slot, chooser, text))
        if not joiners:
            return
        try:
            logits, kv = self._prefill(joiners)  # (J, V)
        except Exception as err:  # the running rows' cache is untouched: only the joiners fail
            self._fail(joiners, err)
            return
        if self._kv is None:
            self._kv = kv
        else:
            self._kv.merge(kv)
        self._rows += joiners
        self._advance(joiners, choose_tokens(logits, [row.chooser for row in joiners]))

    def _prefill(self, joiners: list[_Row]) -> tuple[torch.Tensor, BatchKV]:
        """The joiners' first logits (J, V) and KV cache, their shared prefix (if any) computed once."""
        prompts = [row.handle.prompt_ids for row in joiners]
        prefix = self._prefix_for(prompts, joiners)
        config = getattr(self.model, "config", None)
        cache = prefix.cache_for(len(joiners), config) if prefix is not None else DynamicCache(config=config)
        shared = len(prefix) if prefix is not None else 0
        ids, mask, positions = BatchKV.after_prefix(prompts, shared, self.pad_id, self.device)
        if self.routing is not None:
            self.routing.route([row.slot for row in joiners], token_mask=mask)
        logits = self._forward(ids, mask, positions, cache)  # (J, V)
        return logits, BatchKV(cache, mask)

    def _prefix_for(self, prompts: list[list[int]], joiners: list[_Row]) -> PrefixKV | None:
        """The kept prefix when every prompt begins with it, else a new one the prompts share (prefilled
        here and kept), else None. Only joiners of one adapter share a prefix."""
        adapters = {row.handle.request.adapter for row in joiners}
        if not self.share_prefixes or len(adapters) > 1:
            return None
        adapter = adapters.pop()
        if self._prefix is not None and self._prefix.starts(prompts, adapter):
            return self._prefix
        length = shared_prefix_length(prompts)
        if not length:
            return None
        ids = prompts[0][:length]
        cache = DynamicCache(config=getattr(self.model, "config", None))
        if self.routing is not None:
            self.routing.route([joiners[0].slot])
        self._forward(
            torch.tensor([ids], device=self.device),
            torch.ones((1, length), dtype=torch.long, device=self.device),
            torch.arange(length, device=self.device)[None],
            cache,
        )
        self._prefix = PrefixKV(ids, adapter, cache)
        return self._prefix

    def _decode(self) -> None:
        assert self._kv is not None
        last = torch.tensor([[row.last] for row in self._rows], device=self.device)  # (B, 1)
        mask, positions = self._kv.decode_inputs()  # (B, L + 1), (B, 1)
        if self.routing is not None:
            self.routing.route([row.slot for row in self._rows])
        logits = self._forward(last, mask, positions, self._kv.cache)  # (B, V)
        self._advance(self._rows, choose_tokens(logits, [row.chooser for row in self._rows]))

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Last-position logits (B, V) of one forward pass over ids (B, T), filling `cache`."""
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float()

    def _advance(self, rows: list[_Row], choices: list[int | SamplingError]) -> None:
        """Give each row its next token: stream its text, and mark it finished when it is (failed, when
        its choice is a `SamplingError`)."""
        now = time.perf_counter()
        with self._tokenizer_lock:  # decoding shares the tokenizer with `submit` in other threads
            pieces = [
                "" if isinstance(choice, SamplingError) else row.text.add(choice)
                for row, choice in zip(rows, choices, strict=True)
            ]
        for row, token, piece in zip(rows, choices, pieces, strict=True):
            if isinstance(token, SamplingError):  # this row alone ends; its tokens so far are kept
                row.finish, row.error = "error", str(token)
                continue
            handle, settings = row.handle, row.handle.request.sampling
            row.last = token
            row.tokens.append(token)
            if handle.first_token_at is None:
                handle.first_token_at = now
            if piece:
                handle._emit(piece)
            full = (
                self.max_positions is not None
                and len(handle.prompt_ids) + len(row.tokens) >= self.max_positions
            )
            if row.text.stopped or (token in self.eos_ids and not settings.ignore_eos):
                row.finish = "stop"
            elif len(row.tokens) >= settings.max_tokens or full:
                row.finish = "length"
            elif handle.request.stop_when is not None and handle.request.stop_when(row.text.text):
                row.finish = "stop"

    def _retire(self) -> None:
        """Complete the finished (or cancelled) rows and drop them from the batch and its KV cache."""
        for row in self._rows:
            if row.finish is None and row.handle.cancelled:
                row.finish = "cancelled"
        keep = [i for i, row in enumerate(self._rows) if row.finish is None]
        if len(keep) == len(self._rows):
            return
        for row in self._rows:
            if row.finish is not None:
                self._release(row)
                piece = row.text.flush()
                if piece:
                    row.handle._emit(piece)
                self._complete(row.handle, row.tokens, row.text.text, row.finish, error=row.error)
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._kv = None
        elif self._kv is not None:
            self._kv.keep(keep)

    def _fail(self, rows: list[_Row], err: Exception) -> None:
        message = f"generation failed: {type(err).__name__}: {err}"
        for row in rows:
            self._release(row)
            self._complete(row.handle, row.tokens, row.text.text, "error", error=message)

    # --- adapters, prompts, completions -------------------------------------------------------------------

    def _pin_adapter(self, ref: str | None) -> int | None:
        """The slot serving `ref` (0 = base), pinned for the request; None when every slot is in use."""
        if self.slots is None:
            if ref is not None and self.merged is None:
                raise AdapterError(f"adapter {ref!r} is not served here: this engine runs its model as given")
            if ref is not None and ref != self.merged:
                raise AdapterError(
                    f"adapter {ref!r} is not served here: this engine serves only {self.merged!r}, merged"
                )
            return 0
        if ref is None:
            return 0
        assert self.cache is not None, "an engine with adapter slots has a cache"
        loaded = None if self.slots.slot_of(ref) is not None else self.cache.get(ref)
        return self.slots.acquire(ref, loaded)

    def _release(self, row: _Row) -> None:
        ref = row.handle.request.adapter
        if self.slots is not None and ref is not None and row.slot:
            self.slots.release(ref)

    def _encode(self, request: Request) -> list[int]:
        prompt = request.prompt_ids if request.prompt_ids is not None else self._tokenize(request)
        if not prompt:
            raise ConfigError(f"request {request.request_id}: the prompt is empty (no tokens)")
        if self.max_positions is not None and len(prompt) >= self.max_positions:
            raise ConfigError(
                f"request {request.request_id}: the prompt has {len(prompt)} tokens; the model takes at most "
                f"{self.max_positions - 1} before generating"
            )
        return prompt

    def _tokenize(self, request: Request) -> list[int]:
        with self._tokenizer_lock:
            if request.messages is None:
                ids = encode_prompt(self.tokenizer, request.prompt or "", chat=request.sampling.chat)
            elif getattr(self.tokenizer, "chat_template", None):
                ids = self.tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )  # type: ignore[assignment]
            else:
                raise ConfigError("request has chat messages, but the tokenizer has no chat template")
        prompt: list[int] = ids["input_ids"][0].tolist()
        return prompt

    def _complete(
        self,
        handle: RequestHandle,
        tokens: list[int],
        text: str,
        reason: FinishReason,
        error: str | None = None,
    ) -> None:
        now = time.perf_counter()
        first = handle.first_token_at
        handle._finish(
            Completion(
                request_id=handle.request.request_id,
                adapter=handle.request.adapter,
                text=text,
                token_ids=list(tokens),
                prompt_tokens=len(handle.prompt_ids),
                completion_tokens=len(tokens),
                finish_reason=reason,
                error=error,
                time_to_first_token=None if first is None else first - handle.submitted_at,
                time_per_output_token=(now - first) / (len(tokens) - 1)
                if first and len(tokens) > 1
                else None,
            )
        )
