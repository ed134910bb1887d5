"""The adapter cache: LoRA adapters read from disk (or a registry) into CPU memory, shared by all requests.

Serving keeps adapters in two tiers. The device tier is a fixed set of slots in the engine's multi-LoRA
layers (on the GPU, or the CPU when that is all there is); it lives in the engine and, on a miss, asks
this cache. This cache is the CPU tier behind it: each entry is a `LoadedAdapter`, the factors of one
adapter ready to copy into a slot,

    ΔW·x = s·B·A·x,   A: r × in,  B: out × r  (fp32, CPU, contiguous),  s = α/r  (α/√r with rsLoRA),

keyed by the reference a request named (an adapter name, a path, or a registry id that an `AdapterSource`
turns into a local directory). Entries are kept least-recently-used first and evicted to stay within
`max_adapters` entries and `max_bytes` bytes of factors.

Loading is single-flight: the first `get` of an uncached ref reads it while later `get`s of the same ref
wait for that one read; the cache lock is never held while reading files, so hits and loads of other
adapters go on meanwhile. A failed load fails exactly the requests that waited on it, all with the same
`LorafleetError` naming the ref and the reason; nothing is cached, so the next `get` tries again.

An adapter is refused (`BaseModelMismatchError`) when its `lorafleet.json` records another base model, or
when a module it adapts is missing from the served base or has other in/out features. Serving computes
plain LoRA only, so DoRA, trained biases, modules_to_save, per-module rank or alpha patterns, embedding
LoRA and initialisations that rewrote the base weights (PiSSA, OLoRA, LoftQ, ...) are refused with an
`AdapterError` naming the feature.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from peft import LoraConfig, PeftModel
from transformers.pytorch_utils import Conv1D

from lorafleet.adapters.factors import Factors, lora_factors, lora_scale
from lorafleet.adapters.identity import BaseIdentity, check_same_base
from lorafleet.adapters.storage import AdapterCard, adapter_path, adapters_dir, read_adapter
from lorafleet.errors import AdapterError, BaseModelMismatchError, ConfigError, LorafleetError

PEFT_PREFIX = "base_model.model."
# Initialisations that leave the base weights as they were; the others (PiSSA, OLoRA, CorDA, LoftQ,
# LoRA-GA, ...) subtract their initial BA from the base, which serving's unchanged base would not match.
_SAFE_INITS: tuple[bool | str, ...] = (True, False, "gaussian", "eva", "orthogonal")
# Config fields that change what a LoRA layer computes: (field, the feature in the user's words).
_UNSUPPORTED: tuple[tuple[str, str], ...] = (
    ("use_dora", "DoRA (use_dora)"),
    ("modules_to_save", "modules_to_save"),
    ("lora_bias", "a trained LoRA bias (lora_bias)"),
    ("rank_pattern", "per-module ranks (rank_pattern)"),
    ("alpha_pattern", "per-module alphas (alpha_pattern)"),
    ("layer_replication", "layer_replication"),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
    ("use_qalora", "QA-LoRA (use_qalora)"),
    ("arrow_config", "Arrow routing (arrow_config)"),
    ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
    ("kasa_config", "KaSA (kasa_config)"),
    ("monteclora_config", "MonteCLoRA (monteclora_config)"),
)


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """One adapter's LoRA factors in CPU memory, as the cache hands it out; compared by identity."""

    ref: str  # the reference it was requested by
    path: Path  # the directory it was read from
    rank: int  # r from the config
    scale: float  # s = α/r, or α/√r with rsLoRA
    factors: dict[str, Factors]  # module name (as in base.named_modules()) → (A (r, in), B (out, r))
    nbytes: int  # bytes of all factors
    card: AdapterCard | None  # the lorafleet.json sidecar; None for plain PEFT adapters


class AdapterSource(Protocol):
    """Where adapters come from: a reference → a local adapter directory (a registry implements it)."""

    def locate(self, ref: str) -> Path:
        """A local adapter directory for `ref`; raise `AdapterError` when `ref` is unknown."""
        ...


class DirectorySource:
    """Adapters by an explicit name → path mapping, else by name in `$LORAFLEET_HOME/adapters/` or path."""

    def __init__(self, mapping: Mapping[str, str | os.PathLike[str]] | None = None) -> None:
        self._mapping = {name: Path(path).expanduser() for name, path in (mapping or {}).items()}

    def locate(self, ref: str) -> Path:
        """The directory of `ref`; `AdapterError` when there is none."""
        if ref in self._mapping:
            path = self._mapping[ref]
        else:
            try:
                path = adapter_path(ref)
            except ConfigError as err:  # a name that cannot be a path
                raise AdapterError(f"unknown adapter {ref!r}: {err}") from err
        if path.is_dir():
            return path
        if path.parent == adapters_dir():
            raise AdapterError(f"unknown adapter {ref!r}: none of that name in {adapters_dir()}, nor here")
        raise AdapterError(f"unknown adapter {ref!r}: no directory {path}")


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was made: `loads` are successful reads, `failures` failed ones."""

    hits: int  # gets answered from the cache
    misses: int  # gets that had to load or wait for a load
    loads: int  # adapters read and cached
    failures: int  # loads that failed (every waiter got the error)
    evictions: int  # entries dropped to stay within max_adapters / max_bytes


class AdapterCache:
    """A thread-safe LRU of `LoadedAdapter`s bounded by count and bytes, loading each ref once on a miss."""

    def __init__(
        self,
        base: BaseIdentity,
        *,
        source: AdapterSource | None = None,
        module_shapes: Mapping[str, tuple[int, int]] | None = None,
        max_adapters: int = 64,
        max_bytes: int | None = None,
    ) -> None:
        if max_adapters < 1:
            raise ConfigError(f"max_adapters is {max_adapters}; the cache must hold at least 1 adapter")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes is {max_bytes}; give a positive byte count, or None for no limit")
        self.base = base
        self.source: AdapterSource = source if source is not None else DirectorySource()
        self.module_shapes = dict(module_shapes) if module_shapes is not None else None
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, LoadedAdapter] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future[LoadedAdapter]] = {}  # ref → the one load in flight
        self._nbytes = 0
        self._hits = self._misses = self._loads = self._failures = self._evictions = 0

    def get(self, ref: str) -> LoadedAdapter:
        """The adapter `ref`, from the cache or loaded once however many requests ask at the same time."""
        with self._lock:
            entry = self._entries.get(ref)
            if entry is not None:
                self._entries.move_to_end(ref)
                self._hits += 1
                return entry
            self._misses += 1
            flight = self._loading.get(ref)
            owner = flight is None
            if flight is None:
                flight = self._loading[ref] = Future()
        if not owner:
            return flight.result()
        try:
            adapter = self._load(ref)
            with self._lock:
                self._insert(ref, adapter, flight)
        except BaseException as err:
            error = _naming_ref(err, ref)
            with self._lock:
                self._failures += 1
                if self._loading.get(ref) is flight:
                    del self._loading[ref]
            flight.set_exception(error)
            if error is err or not isinstance(err, Exception):  # Ctrl-C stays Ctrl-C in this thread
                raise
            raise error from err
        flight.set_result(adapter)
        return adapter

    def evict(self, ref: str) -> bool:
        """Drop `ref` (a load in flight still answers its waiters but is not cached); True if it was there."""
        with self._lock:
            loading = self._loading.pop(ref, None) is not None
            entry = self._entries.pop(ref, None)
            if entry is not None:
                self._nbytes -= entry.nbytes
            return entry is not None or loading

    def clear(self) -> None:
        """Drop every adapter (loads in flight answer their waiters but are not cached)."""
        with self._lock:
            self._entries.clear()
            self._loading.clear()
            self._nbytes = 0

    def __contains__(self, ref: object) -> bool:
        with self._lock:
            return ref in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of factors held."""
        with self._lock:
            return self._nbytes

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                loads=self._loads,
                failures=self._failures,
                evictions=self._evictions,
            )

    def _load(self, ref: str) -> LoadedAdapter:
        """Locate, read and check one adapter against the served base (no lock held)."""
        adapter = load_lora(self.source.locate(ref), ref=ref)
        if adapter.card is not None:
            check_same_base(adapter.card.base_model, self.base, adapter=f"adapter {ref!r}")
        if self.module_shapes is not None:
            check_module_shapes(adapter, self.module_shapes)
        if self.max_bytes is not None and adapter.nbytes > self.max_bytes:
            raise AdapterError(
                f"adapter {ref!r} holds {adapter.nbytes:,} bytes of factors, more than the cache's "
                f"max_bytes {self.max_bytes:,}; raise max_bytes"
            )
        return adapter

    def _insert(self, ref: str, adapter: LoadedAdapter, flight: Future[LoadedAdapter]) -> None:
        """Cache `adapter` as most recently used and evict from the LRU end (lock held)."""
        self._loads += 1
        if self._loading.get(ref) is not flight:  # evicted or cleared while loading: answer, don't cache
            return
        del self._loading[ref]
        self._entries[ref] = adapter
        self._nbytes += adapter.nbytes
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_adapters
            or (self.max_bytes is not None and self._nbytes > self.max_bytes)
        ):
            _, oldest = self._entries.popitem(last=False)
            self._nbytes -= oldest.nbytes
            self._evictions += 1


def load_lora(path: Path, *, ref: str) -> LoadedAdapter:
    """Read and validate one adapter directory as plain LoRA factors; the base model is not checked."""
    try:
        config, state, card = read_adapter(path)
        _check_plain_lora(config, state, ref=ref, path=path)
        # read_adapter's tensors own their memory (not mapped from the file), so a cached adapter
        # survives its file being rewritten.
        factors = {
            module.removeprefix(PEFT_PREFIX): (a.contiguous(), b.contiguous())
            for module, (a, b) in lora_factors(state).items()
        }
    except LorafleetError as err:
        named = _naming_ref(err, ref)
        if named is err:
            raise
        raise named from err
    if not factors:
        raise AdapterError(f"adapter {ref!r} ({path}): holds no lora_A/lora_B weights")
    for module, (a, b) in factors.items():  # A: (r, in), B: (out, r)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != config.r or b.shape[1] != config.r:
            raise AdapterError(
                f"adapter {ref!r} ({path}): module {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                f"not (r, in) and (out, r) with r={config.r} from its config"
            )
    nbytes = sum(t.numel() * t.element_size() for pair in factors.values() for t in pair)
    return LoadedAdapter(
        ref=ref,
        path=path,
        rank=config.r,
        scale=lora_scale(config),
        factors=factors,
        nbytes=nbytes,
        card=card,
    )


def check_module_shapes(adapter: LoadedAdapter, module_shapes: Mapping[str, tuple[int, int]]) -> None:
    """Raise `BaseModelMismatchError` naming the first module the served base lacks or shapes otherwise."""
    for module, (a, b) in adapter.factors.items():
        if module not in module_shapes:
            raise BaseModelMismatchError(
                f"adapter {adapter.ref!r} adapts module {module}, which is not a linear layer of the "
                "served base model"
            )
        in_features, out_features = module_shapes[module]
        if a.shape[1] != in_features or b.shape[0] != out_features:
            raise BaseModelMismatchError(
                f"adapter {adapter.ref!r}: module {module} maps {a.shape[1]} → {b.shape[0]} features in the "
                f"adapter but {in_features} → {out_features} in the served base; it was made for another base"
            )


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Module name → (in_features, out_features) of every linear layer of `model`'s base.

    bitsandbytes' 4- and 8-bit layers are `nn.Linear`s whose attributes give the unpacked sizes; GPT-2's
    `Conv1D` is a linear layer storing its weight as (in, out). A PEFT model gives its base's layers.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in base.named_modules():
        if "lora_" in name:
            continue
        if isinstance(module, torch.nn.Linear):
            shapes[name.replace(".base_layer", "")] = (int(module.in_features), int(module.out_features))
        elif isinstance(module, Conv1D):
            shapes[name.replace(".base_layer", "")] = (
                int(module.weight.shape[0]),
                int(module.weight.shape[1]),
            )
    return shapes


def _check_plain_lora(config: LoraConfig, state: dict[str, torch.Tensor], *, ref: str, path: Path) -> None:
    """Raise `AdapterError` naming the first feature beyond plain LoRA on linear layers."""
    where = f"adapter {ref!r} ({path})"
    for field, feature in _UNSUPPORTED:
        if getattr(config, field, None):
            raise AdapterError(f"{where} uses {feature}; serving supports plain LoRA only")
    if config.bias != "none":
        raise AdapterError(f"{where} trains biases (bias={config.bias!r}); serving supports plain LoRA only")
    if config.init_lora_weights not in _SAFE_INITS:
        raise AdapterError(
            f"{where} was initialised with {config.init_lora_weights!r}, which changes the base weights; "
            "serving supports plain LoRA only (save it converted to plain LoRA with PEFT's "
            "path_initial_model_for_weight_conversion)"
        )
    for key in state:
        if key.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        if "lora_embedding_" in key:
            raise AdapterError(
                f"{where} holds {key} (embedding LoRA); serving supports LoRA on linear layers only"
            )
        # PEFT's save_pretrained stores the whole weight of lm_head or embed_tokens when they are targets.
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").removesuffix(".base_layer")
        short = module.rsplit(".", 1)[-1]
        raise AdapterError(
            f"{where} holds {key}: whole weights of {module}, not LoRA factors (PEFT saves them when "
            f"{short} is a LoRA target); serving adds lora_A/lora_B factors to the shared base's linear "
            "layers, never replaces a layer's weights, and does not adapt the output head: train without "
            f"{short} in target_modules, or merge the adapter into a model of its own "
            "(lorafleet adapters merge)"
        )


def _naming_ref(err: BaseException, ref: str) -> LorafleetError:
    """`err` as a `LorafleetError` whose message names `'ref'` (`err` itself when it already does)."""
    if isinstance(err, LorafleetError):
        if repr(ref) in str(err):
            return err
        try:
            return type(err)(f"adapter {ref!r}: {err}")
        except TypeError:  # an error class with another constructor
            return AdapterError(f"adapter {ref!r}: {err}")
    if isinstance(err, Exception):
        return AdapterError(f"adapter {ref!r} could not be loaded: {type(err).__name__}: {err}")
    return AdapterError(f"adapter {ref!r}: the load was interrupted ({type(err).__name__})")
